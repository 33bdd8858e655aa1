"""End to end: `fewsight serve` in its own process, its page driven in headless Chromium (Debian's
chromium and chromium-driver, through selenium): make classes, upload Omniglot drawings, drop
queries and read the predicted classes off the page. FEWSIGHT_SCREENSHOT=FILE saves the page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/lib/chromium/chromedriver",) if Path(p).is_file()), None
)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM and DRIVER):
        missing = "chromium" if not CHROMIUM else "chromedriver"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is not installed; .ci/run installs Debian's chromium and chromium-driver")
        pytest.skip(f"{missing} is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,1120"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def serve() -> Iterator:
    """Starts `fewsight serve MODEL --port 0` in a process of its own and returns the address it
    prints; the process ends with the test."""
    processes = []

    def start(model: str) -> str:
        command = [sys.executable, "-m", "fewsight", "serve", model, "--port", "0", "--device", "cpu"]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        line = processes[-1].stdout.readline()
        assert line.startswith("fewsight serve: http://127.0.0.1:"), line
        return line.split()[2]

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def wait_for(driver, condition, seconds: float = 60):
    return WebDriverWait(driver, seconds).until(lambda d: condition(d))


def use_page(driver, url: str, drawings: Path, classes: int, algorithm: str) -> tuple[dict, dict]:
    """Teach `classes` characters (2 drawings each) on the page, drop 2 more of each as queries;
    returns the predicted class of each query file, read off the page, and its true class."""
    driver.get(url)
    wait_for(driver, lambda d: algorithm in d.find_element(By.ID, "model-info").text)
    queries, truth = [], {}
    for character in sorted(drawings.iterdir())[:classes]:
        name = character.name
        driver.find_element(By.ID, "new-class-name").send_keys(name)
        driver.find_element(By.ID, "add-class").click()
        card = wait_for(driver, lambda d, n=name: d.find_element(By.CSS_SELECTOR, f'[data-class="{n}"]'))
        files = sorted(character.iterdir())
        card.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys("\n".join(map(str, files[:2])))
        wait_for(driver, lambda d, n=name: f"{n} (2)" in d.find_element(By.ID, "classes").text)
        queries += files[2:4]
        truth.update({f.name: name for f in files[2:4]})
    driver.find_element(By.ID, "query-files").send_keys("\n".join(map(str, queries)))
    rows = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr"))
    error = driver.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text
    cells = [row.find_elements(By.TAG_NAME, "td") for row in rows]
    predicted = {cell[1].text: cell[2].text for cell in cells}
    assert predicted.keys() == truth.keys()
    return predicted, truth


def test_the_page_teaches_the_bundled_model_and_predicts(browser, serve, drawings):
    predicted, truth = use_page(browser, serve("omniglot"), drawings, classes=3, algorithm="protonet")
    assert sum(predicted[f] == c for f, c in truth.items()) >= 5, (predicted, truth)
    assert "6 image(s) classified" in browser.find_element(By.ID, "status").text
    if os.environ.get("FEWSIGHT_SCREENSHOT"):
        browser.save_screenshot(os.environ["FEWSIGHT_SCREENSHOT"])


def test_the_page_adapts_a_maml_run(browser, serve, drawings, maml_run):
    """The MAML family adapts by gradient steps first (the page says so), then classifies."""
    predicted, truth = use_page(browser, serve(str(maml_run)), drawings, classes=3, algorithm="maml")
    assert set(predicted.values()) <= set(truth.values())
    assert "6 image(s) classified" in browser.find_element(By.ID, "status").text
    log = browser.execute_script("return window.statusLog")
    assert any(line.startswith("Adapting maml to 3 classes: 3 gradient steps") for line in log), log
