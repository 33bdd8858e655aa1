"""The scripts in examples/ run (a few steps each) and the MAML one reproduces the CLI's weights."""

import importlib.util
import shlex
from pathlib import Path

import pytest
import torch

from fewsight.cli import main as cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_maml_example_reproduces_the_cli_run(omniglot_train, tmp_path):
    learner = load("maml_omniglot").main(steps=2, test_episodes=4)
    run = tmp_path / "run"
    argv = ["train", "--algorithm", "maml", "--ways", "5", "--shots", "1", "--trainval", "--steps", "2"]
    assert cli([*argv, "--quiet", "--device", "cpu", "--out", str(run)]) == 0
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["learner"]
    assert all(torch.equal(value, saved[name]) for name, value in learner.state_dict().items())


def test_weight_prediction_example_runs(omniglot_train):
    learner = load("weight_prediction").main(steps=3, test_episodes=4)
    assert learner.adapt(torch.rand(5, 1, 28, 28), torch.arange(5))(torch.rand(7, 1, 28, 28)).shape == (7, 5)


def test_own_module_example_runs(omniglot_train):
    results = load("own_module").main(steps=2, test_episodes=4)
    assert set(results) == {"MAML", "ANIL"} and all(0 <= r.mean <= 1 for r in results.values())


def test_the_readmes_predict_examples_print_what_the_readme_shows(tmp_path, monkeypatch, capsys):
    """Every `$ ...` line of the README's predict examples, run as written after
    examples/make_photos.py, prints exactly the lines the README shows under it."""
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "miniimagenet-sample").is_dir() or not (SHARED_DATA / "omniglot").is_dir():
        pytest.skip("../shared/data is not here")
    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = [block for block in readme.split("```")[1::2] if "$ python examples/make_photos.py" in block]
    sessions = [block for block in readme.split("```")[1::2] if "$ fewsight predict" in block]
    assert blocks and len(sessions) >= 2
    monkeypatch.chdir(tmp_path)
    for session in blocks + sessions:
        for command, shown in _commands(session):
            words = shlex.split(command)
            if words[0] == "python":
                assert load("make_photos").main([*words[2:], "--data", str(SHARED_DATA)]) == 0
            elif words[0] == "cat":
                print(Path(words[1]).read_text(), end="")
            else:
                assert cli([*words[1:], "--device", "cpu"]) == 0, command
            assert capsys.readouterr().out.splitlines() == shown, command


def _commands(session: str) -> list[tuple[str, list[str]]]:
    """The `$ command` lines of a shell session and the lines each printed."""
    commands: list[tuple[str, list[str]]] = []
    for line in session.strip("\n").splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    return commands
