"""Divergence: a non-finite loss or weight stops training, and no checkpoint ever holds one."""

import math

import pytest
import torch

import fewsight.training.metatrain
from fewsight.algorithms import MetaLoss
from fewsight.cli import main
from fewsight.errors import FewsightError
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig


class InfiniteGradient(torch.autograd.Function):
    """The identity, whose backward pass makes every gradient infinite: a finite loss, broken weights."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, gradient):
        return gradient * math.inf


def faulty_learners(monkeypatch, fault: str, at_step: int) -> None:
    """Make train() build learners whose meta-loss breaks from step `at_step` on."""

    def build(config):
        learner = build_learner(config)
        meta_loss, calls = learner.meta_loss, []

        def broken(batch):
            result = meta_loss(batch)
            calls.append(1)
            if len(calls) < at_step:
                return result
            if fault == "nan-loss":
                return MetaLoss(result.loss * math.nan, result.accuracy)
            return MetaLoss(InfiniteGradient.apply(result.loss), result.accuracy)

        learner.meta_loss = broken
        return learner

    monkeypatch.setattr(fewsight.training.metatrain, "build_learner", build)


def config(**changes) -> RunConfig:
    settings = dict(steps=8, meta_batch=2, queries=2, trainval=True, log_every=100, checkpoint_every=2)
    return RunConfig(**{**settings, **changes})


@pytest.mark.parametrize("fault", ["nan-loss", "infinite-gradient"])
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(
    omniglot_train, tmp_path, monkeypatch, fault
):
    faulty_learners(monkeypatch, fault, at_step=4)
    with pytest.raises(FewsightError, match=r"diverged by step 4 .*checkpoint\.pt \(step 2\) is kept"):
        fewsight.training.metatrain.train(config(), tmp_path, device="cpu", progress=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 2
    assert all(value.isfinite().all() for value in saved["learner"].values())
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == [
        "checkpoint-2.pt",
        "checkpoint.pt",
    ]


def test_divergence_is_caught_at_the_metrics_row_before_any_checkpoint(omniglot_train, tmp_path, monkeypatch):
    faulty_learners(monkeypatch, "nan-loss", at_step=3)
    settings = config(log_every=1, checkpoint_every=100)
    with pytest.raises(FewsightError, match=r"diverged by step 3 .*nothing was saved"):
        fewsight.training.metatrain.train(settings, tmp_path, device="cpu", progress=False)
    assert not list(tmp_path.glob("checkpoint*"))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_diverging_cli_run_ends_with_one_line(omniglot_train, tmp_path, capsys):
    argv = ["train", "--steps", "3", "--meta-batch", "2", "--queries", "2", "--inner-lr", "1e30"]
    assert main([*argv, "--trainval", "--quiet", "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "training diverged by step" in error and len(error.strip().splitlines()) == 1
