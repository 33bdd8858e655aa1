"""The scripts in examples/ run (a few steps each) and the MAML one reproduces the CLI's weights."""

import importlib.util
from pathlib import Path

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
