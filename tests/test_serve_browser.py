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
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
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
    """`condition(driver)` once it is true; an element replaced while it was read (the page renders
    the classes again after each change) is read again."""
    wait = WebDriverWait(driver, seconds, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(lambda d: condition(d))


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
    log = [entry["message"] for entry in driver.get_log("browser")]
    assert not [line for line in log if "Content Security Policy" in line], log  # the page works under it
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


def make_class(driver, name: str, files: list[Path]) -> None:
    driver.find_element(By.ID, "new-class-name").clear()
    driver.find_element(By.ID, "new-class-name").send_keys(name)
    driver.find_element(By.ID, "add-class").click()
    card = wait_for(driver, lambda d: card_of(d, name))
    if files:
        card.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys("\n".join(map(str, files)))
        wait_for(driver, lambda d: f"{name} ({len(files)})" in card_of(d, name).text)


def card_of(driver, name: str):
    """The card of class `name` (None until there is one)."""
    script = (
        "return [...document.querySelectorAll('#classes .class')].find(c => c.dataset.class === arguments[0])"
    )
    return driver.execute_script(script, name)


def loaded_images(element) -> list[int]:
    """The natural width of each image in `element` that has loaded."""
    images = element.find_elements(By.TAG_NAME, "img")
    return [i.get_property("naturalWidth") for i in images if i.get_property("complete")]


def in_view(driver, element) -> bool:
    return driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight",
        element,
    )


def test_a_reload_shows_what_the_server_holds(browser, serve, drawings):
    """After a reload every class shows its images (as the model sees them) and the last results are
    back; once the classes change the results are marked stale, before and after a reload."""
    url = serve("omniglot")
    predicted, _ = use_page(browser, url, drawings, classes=2, algorithm="protonet")
    browser.refresh()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr"))
    for name in ("character01", "character02"):
        wait_for(browser, lambda d, n=name: loaded_images(card_of(d, n)) == [28, 28])
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert {
        r.find_elements(By.TAG_NAME, "td")[1].text: r.find_elements(By.TAG_NAME, "td")[2].text for r in rows
    } == (predicted)
    wait_for(browser, lambda d: loaded_images(d.find_element(By.ID, "results")) == [28] * 4)
    assert not browser.find_element(By.ID, "stale").is_displayed()
    assert browser.find_element(By.ID, "download-csv").is_enabled()
    make_class(browser, "new", [])
    stale = browser.find_element(By.ID, "stale")
    assert stale.is_displayed() and "made among other classes" in stale.text
    browser.refresh()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr"))
    wait_for(browser, lambda d: d.find_element(By.ID, "stale").is_displayed())


def test_errors_show_where_the_user_is_looking_and_clear_old_results(browser, serve, drawings, tmp_path):
    """Scrolled down to the query area, a failed prediction shows its error in view, and the results
    of the queries before are gone rather than looking like its answer."""
    use_page(browser, serve("omniglot"), drawings, classes=2, algorithm="protonet")
    browser.set_window_size(900, 500)
    try:
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        (tmp_path / "notes.txt").write_text("not an image")
        browser.find_element(By.ID, "query-files").send_keys(str(tmp_path / "notes.txt"))
        error = wait_for(
            browser,
            lambda d: (
                d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed() else None
            ),
        )
        assert "notes.txt is not an image" in error.text
        assert browser.execute_script("return window.scrollY") > 0 and in_view(browser, error)
        assert not browser.find_element(By.ID, "results").is_displayed()
        browser.find_element(By.ID, "error-close").click()
        assert not error.is_displayed()
    finally:
        browser.set_window_size(900, 1120)


# The class cards (and anything shown in them) that stick out of the list, and 'page' if the page
# scrolls sideways.
OVERFLOWING = """
const box = document.querySelector('#classes').getBoundingClientRect();
const out = (e) => {
  const r = e.getBoundingClientRect();
  return r.width > 0 && (r.left < box.left - 0.5 || r.right > box.right + 0.5);
};
return [...document.querySelectorAll('#classes .class, #classes .class *')].filter(out)
  .map((e) => e.className || e.tagName)
  .concat(document.documentElement.scrollWidth > window.innerWidth ? ['page'] : []);
"""


@pytest.mark.parametrize("width", [900, 420, 320])
def test_class_cards_wrap_at_any_number_of_classes(browser, serve, width):
    browser.set_window_size(width, 1000)
    try:
        browser.get(serve("omniglot"))
        wait_for(browser, lambda d: "protonet" in d.find_element(By.ID, "model-info").text)
        for count, name in enumerate(
            ["alpha", "W" * 64, "gamma", "delta", "epsilon", "a much longer name", "η"], 1
        ):
            make_class(browser, name, [])
            overflow = browser.execute_script(OVERFLOWING)
            assert overflow == [], (width, count, overflow)
    finally:
        browser.set_window_size(900, 1120)


def test_every_class_made_on_the_page_can_be_filled_and_used(browser, serve, drawings):
    """A name that could not be used in a URL is refused with the rule; odd but usable names work."""
    browser.get(serve("omniglot"))
    wait_for(browser, lambda d: "protonet" in d.find_element(By.ID, "model-info").text)
    browser.find_element(By.ID, "new-class-name").send_keys("a/b")
    browser.find_element(By.ID, "add-class").click()
    error = wait_for(
        browser,
        lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed() else None,
    )
    assert 'with no "/", and not "." or ".."' in error.text
    assert browser.find_elements(By.CSS_SELECTOR, "#classes .class") == []
    characters = sorted(drawings.iterdir())
    for name, character in zip(["50% ?x#y", "..."], characters, strict=False):
        make_class(browser, name, sorted(character.iterdir())[:2])
    browser.find_element(By.ID, "query-files").send_keys(str(sorted(characters[0].iterdir())[3]))
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr"))
    assert not browser.find_element(By.ID, "error").is_displayed()
    wait_for(browser, lambda d: card_of(d, "...").find_element(By.TAG_NAME, "button")).click()
    wait_for(browser, lambda d: card_of(d, "...") is None)
    assert not browser.find_element(By.ID, "error").is_displayed()
