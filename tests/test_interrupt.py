"""Ctrl-C and SIGTERM finish the current step and save it: the resumed run equals an uninterrupted one."""

import os
import signal
import time

import pytest
import torch

import fewsight.training.metatrain
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.training.signals import StopRequests
from tests.conftest import same

CONFIG = dict(steps=5, meta_batch=2, queries=2, trainval=True, log_every=2, checkpoint_every=100)


def signalling_learners(monkeypatch, number: int, at_step: int) -> None:
    """Make train() build learners that send this process `number` in the middle of step `at_step`."""

    def build(config):
        learner = build_learner(config)
        meta_loss, calls = learner.meta_loss, []

        def interrupted(batch):
            calls.append(1)
            if len(calls) == at_step:
                os.kill(os.getpid(), number)
            return meta_loss(batch)

        learner.meta_loss = interrupted
        return learner

    monkeypatch.setattr(fewsight.training.metatrain, "build_learner", build)


@pytest.mark.skipif(os.name != "posix", reason="signals sent with os.kill")
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_finished_step_and_resume_continues_exactly(
    omniglot_train, tmp_path, monkeypatch, number
):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    handler = signal.getsignal(number)
    fewsight.training.metatrain.train(RunConfig(**CONFIG), whole, device="cpu", progress=False)
    signalling_learners(monkeypatch, number, at_step=3)
    with pytest.raises(KeyboardInterrupt):
        fewsight.training.metatrain.train(RunConfig(**CONFIG), parts, device="cpu", progress=False)
    assert torch.load(parts / "checkpoint.pt", weights_only=True)["step"] == 3
    monkeypatch.undo()
    fewsight.training.metatrain.train(RunConfig(**CONFIG), parts, device="cpu", resume=True, progress=False)
    assert same(
        torch.load(whole / "checkpoint.pt", weights_only=True),
        torch.load(parts / "checkpoint.pt", weights_only=True),
    )
    assert signal.getsignal(number) is handler  # training gave the signal back


@pytest.mark.skipif(os.name != "posix", reason="signals sent with os.kill")
def test_a_second_signal_stops_at_once():
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # Python runs the handler between two bytecodes
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
