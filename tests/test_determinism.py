"""Determinism: on the CPU, the same seed gives the same weights, metrics and test accuracy."""

import json

import torch

from fewsight.cli import main
from tests.conftest import metrics, same

TINY = ["--steps", "3", "--meta-batch", "2", "--queries", "2", "--log-every", "1", "--val-every", "2"]
TINY += ["--val-episodes", "4", "--quiet", "--device", "cpu"]


def test_the_same_seed_gives_the_same_run_on_the_cpu(omniglot_train, tmp_path, capsys):
    runs = [tmp_path / name for name in ("first", "again", "other-seed")]
    for run, seed in zip(runs, ("0", "0", "1"), strict=True):
        assert main(["train", *TINY, "--seed", seed, "--out", str(run)]) == 0
    first, again, other = (torch.load(run / "checkpoint.pt", weights_only=True) for run in runs)
    assert same(first, again)
    assert metrics(runs[0]) == metrics(runs[1])
    assert not same(first["learner"], other["learner"])
    capsys.readouterr()
    results = []
    for run in runs[:2]:
        assert main(["eval", str(run), "--episodes", "6", "--json", "--quiet", "--device", "cpu"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1]
