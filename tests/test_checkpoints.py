"""Checkpoints: written atomically, the last few kept, loaded without running code."""

import os

import pytest
import torch

from fewsight.cli import main
from fewsight.errors import FewsightError
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.run.files import read_checkpoint, save_checkpoint

TINY = ["--meta-batch", "2", "--queries", "2", "--trainval", "--quiet", "--device", "cpu"]


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_last_three_checkpoints_are_kept(omniglot_train, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--steps", "5", "--checkpoint-every", "1", *TINY, "--out", str(run)]) == 0
    names = sorted(p.name for p in run.iterdir())
    assert names == [
        "checkpoint-3.pt",
        "checkpoint-4.pt",
        "checkpoint-5.pt",
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
    ]
    assert (run / "checkpoint.pt").read_bytes() == (run / "checkpoint-5.pt").read_bytes()
    assert read_checkpoint(run / "checkpoint-3.pt")["step"] == 3


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint({"learner": {"w": torch.zeros(3)}, "step": 1}, tmp_path, 1)

    def crash(*args):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint({"learner": {"w": torch.ones(3)}, "step": 2}, tmp_path, 2)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1
    assert torch.equal(read_checkpoint(tmp_path / "checkpoint.pt")["learner"]["w"], torch.zeros(3))
    save_checkpoint({"learner": {"w": torch.ones(3)}, "step": 2}, tmp_path, 2)  # the next save succeeds
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-1.pt", "checkpoint-2.pt", "checkpoint.pt"]


@pytest.fixture
def run_folder(tmp_path):
    """A run folder with a valid config.json and no checkpoint yet."""
    folder = tmp_path / "run"
    folder.mkdir()
    RunConfig(steps=2, meta_batch=2, queries=2, trainval=True).save(folder)
    return folder


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_checkpoint_that_would_run_code_is_refused(omniglot_train, run_folder, tmp_path, capsys, command):
    marker = tmp_path / "code-ran"
    torch.save({"learner": RunsCode(marker), "step": 1}, run_folder / "checkpoint.pt")
    argv = {
        "eval": ["eval", str(run_folder), "--episodes", "2", "--quiet", "--device", "cpu"],
        "resume": ["train", "--steps", "3", *TINY, "--out", str(run_folder), "--resume"],
    }[command]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "is not a safe fewsight checkpoint: loading it would run code, so it was refused" in error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "damaged or not a fewsight checkpoint"), (b"\x80\x02K\x01.", "not a fewsight checkpoint")],
    ids=["empty", "no-weights"],
)
def test_a_damaged_checkpoint_is_reported_in_one_line(run_folder, capsys, content, message):
    (run_folder / "checkpoint.pt").write_bytes(content)
    assert main(["eval", str(run_folder), "--quiet", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_read_checkpoint_refuses_with_a_fewsight_error(tmp_path):
    torch.save({"learner": RunsCode(tmp_path / "code-ran")}, tmp_path / "evil.pt")
    with pytest.raises(FewsightError, match="refused"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "code-ran").exists()


def test_an_older_checkpoint_is_evaluated_but_not_resumed(omniglot_train, run_folder, capsys):
    learner = build_learner(RunConfig.load(run_folder))
    torch.save({"learner": learner.state_dict(), "step": 2}, run_folder / "checkpoint.pt")
    assert main(["eval", str(run_folder), "--episodes", "2", "--quiet", "--device", "cpu"]) == 0
    assert main(["train", "--steps", "3", *TINY, "--out", str(run_folder), "--resume"]) == 2
    assert "cannot be resumed" in capsys.readouterr().err
