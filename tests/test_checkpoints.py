"""Checkpoints: written atomically, the last few kept, loaded without running code."""

import errno
import io
import json
import os
import pickle
import random
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from fewsight.cli import main
from fewsight.errors import FewsightError
from fewsight.run import files
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.run.files import read_checkpoint, save_checkpoint
from fewsight.use.models import BUNDLED, bundled_names
from tests.conftest import make_task, metrics, same

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
    refused = "is not a safe fewsight checkpoint: loading it would run code, so it was refused"
    assert f"{refused} (it calls posix.system)" in error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert not marker.exists()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    return buffer.getvalue()


def zip_without_pickle() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return buffer.getvalue()


def cut_short() -> bytes:
    buffer = io.BytesIO()
    torch.save({"learner": {"w": torch.zeros(1000)}, "step": 1}, buffer)
    return buffer.getvalue()[:3000]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: b"", "is damaged (it is empty, 0 bytes), so it was not used"),
        (cut_short, "is damaged (its zip archive is cut short or broken"),
        (lambda: b"\x80\x02K\x01.", "is a plain pickle, not a fewsight checkpoint"),
        (jpeg, "is a JPEG image, not a fewsight checkpoint"),
        (lambda: b"# My model\n\nTrained on Omniglot.\n", "is a text file, not a fewsight checkpoint"),
        (
            lambda: random.Random(0).randbytes(4096),
            "is of a kind fewsight does not know, not a fewsight checkpoint",
        ),
        (zip_without_pickle, "is a zip archive without data.pkl, not a fewsight checkpoint"),
        (lambda: pickle.dumps(RunsCode("/tmp/never")), "loading it would run code, so it was refused"),
    ],
    ids=[
        "empty",
        "cut-short",
        "no-weights",
        "jpeg",
        "readme",
        "random-bytes",
        "other-zip",
        "plain-pickle-code",
    ],
)
def test_a_damaged_checkpoint_or_another_file_is_named_for_what_it_is(run_folder, capsys, content, message):
    (run_folder / "checkpoint.pt").write_bytes(content())
    assert main(["eval", str(run_folder), "--quiet", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert "/tmp/never" not in error and not Path("/tmp/never").exists()


def flip_a_byte(path: Path) -> None:
    """Flip one byte in the middle of the first tensor stored in a checkpoint's zip archive: what a
    bad sector or a bad copy does. torch.load alone would load the changed weights."""
    with zipfile.ZipFile(path) as archive:
        member = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 8)
    with open(path, "r+b") as handle:
        handle.seek(member.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        where = member.header_offset + 30 + name_length + extra_length + member.file_size // 2
        handle.seek(where)
        byte = handle.read(1)[0]
        handle.seek(where)
        handle.write(bytes([byte ^ 0x10]))
    torch.load(path, weights_only=True)  # still loads without the check


@pytest.fixture(scope="module")
def three_checkpoints(omniglot_train, tmp_path_factory):
    """A run of 3 steps that kept checkpoint-1.pt to -3.pt, and one of 4 steps to compare with."""
    root = tmp_path_factory.mktemp("runs")
    for steps in ("3", "4"):
        flags = ["--steps", steps, "--checkpoint-every", "1", "--log-every", "1", *TINY]
        assert main(["train", *flags, "--out", str(root / f"run{steps}")]) == 0
    return root


@pytest.mark.parametrize("lost", ["deleted", "damaged"])
def test_resume_falls_back_to_the_newest_intact_kept_checkpoint(three_checkpoints, tmp_path, capsys, lost):
    run = tmp_path / "run"
    shutil.copytree(three_checkpoints / "run3", run)
    if lost == "deleted":
        (run / "checkpoint.pt").unlink()
        assert main(["eval", str(run), "--episodes", "2", "--quiet", "--device", "cpu"]) == 2
        error = capsys.readouterr().err  # one line, with the copy that a finished run needs
        assert f"{run}/checkpoint.pt is missing; checkpoint-3.pt (step 3) is intact: copy it over" in error
        expected = f"{run}/checkpoint.pt is missing; resuming from checkpoint-3.pt (step 3) instead"
    else:
        flip_a_byte(run / "checkpoint.pt")
        flip_a_byte(run / "checkpoint-3.pt")
        assert main(["eval", str(run), "--episodes", "2", "--quiet", "--device", "cpu"]) == 2
        error = capsys.readouterr().err
        assert (
            f"{run}/checkpoint.pt is damaged (" in error
            and "fails its CRC-32 check), so it was not used" in error
        )
        assert "checkpoint-2.pt (step 2) is intact: copy it over checkpoint.pt (cp " in error
        assert f"or go on from it with fewsight train --resume --out {run}" in error
        assert len(error.strip().splitlines()) == 1
        expected = f"{run}/checkpoint-3.pt is damaged ("
    assert (
        main(["train", "--steps", "4", "--checkpoint-every", "1", *TINY, "--out", str(run), "--resume"]) == 0
    )
    warning = capsys.readouterr().err
    assert expected in warning and len(warning.strip().splitlines()) == 1
    assert (
        "resuming from checkpoint-3.pt (step 3)" in warning
        or "resuming from checkpoint-2.pt (step 2)" in warning
    )
    # the resumed run ends as one that was never interrupted
    whole = three_checkpoints / "run4"
    assert same(read_checkpoint(run / "checkpoint.pt"), read_checkpoint(whole / "checkpoint.pt"))
    assert metrics(run) == metrics(whole)


def test_a_damaged_best_or_exported_file_is_not_used(three_checkpoints, drawings, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(three_checkpoints / "run3", run)
    shutil.copy(run / "checkpoint-2.pt", run / "best.pt")
    flip_a_byte(run / "best.pt")
    assert main(["eval", str(run), "--weights", "best", "--episodes", "2", "--quiet", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert f"{run}/best.pt is damaged (" in error and "; use --weights last" in error
    support, query = make_task(drawings, tmp_path / "task", classes=5)
    exported = tmp_path / "classifier.pt"
    assert (
        main(["export", "omniglot", "--support", str(support), "--out", str(exported), "--device", "cpu"])
        == 0
    )
    flip_a_byte(exported)
    assert main(["predict", str(exported), "--query", str(query), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert f"{exported} is damaged (" in error and "export it again with fewsight export" in error
    assert len(error.strip().splitlines()) == 1


def test_a_damaged_population_file_is_not_used(drawings, tmp_path, capsys):
    model = tmp_path / "miniimagenet"
    shutil.copytree(BUNDLED / "miniimagenet", model)
    flip_a_byte(model / "population.pt")
    support, query = make_task(drawings, tmp_path / "task", classes=5)
    assert (
        main(["predict", str(model), "--support", str(support), "--query", str(query), "--device", "cpu"])
        == 2
    )
    error = capsys.readouterr().err
    assert f"{model}/population.pt is damaged (" in error and "delete it, or estimate them again" in error


def test_bundled_models_and_their_files_pass_the_check():
    from fewsight.run.files import verify_archive

    files = [path for name in bundled_names() for path in (BUNDLED / name).glob("*.pt")]
    assert len(files) >= 3
    for path in files:
        verify_archive(path)


def test_each_wrong_model_argument_is_named_for_what_it_is(three_checkpoints, drawings, tmp_path, capsys):
    support, query = make_task(drawings, tmp_path / "task", classes=5)
    exported = tmp_path / "angelic.pt"
    assert (
        main(["export", "omniglot", "--support", str(support), "--out", str(exported), "--device", "cpu"])
        == 0
    )
    capsys.readouterr()
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "checkpoint.pt").write_bytes(b"\x00" * 100)
    run = three_checkpoints / "run3"
    cases = [
        (
            ["eval", str(exported)],
            f"{exported} is an exported classifier: this command takes a run folder or a bundled model",
            f"use the exported classifier with fewsight predict {exported} --query IMAGES",
        ),
        (
            ["eval", str(lone)],
            f"{lone} has no config.json, so it is not a run folder; it holds checkpoint.pt",
            "",
        ),
        (
            ["eval", str(run / "checkpoint.pt")],
            "is a checkpoint file, not a run folder: give its run folder",
            "",
        ),
        (
            ["predict", str(run / "checkpoint.pt"), "--support", str(support), "--query", str(query)],
            "is a run's checkpoint, not an exported classifier: give its run folder with --support DIR",
            "",
        ),
        (
            ["predict", str(lone / "checkpoint.pt"), "--query", str(query)],
            "is of a kind fewsight does not know",
            "",
        ),
    ]
    for argv, message, more in cases:
        assert main([*argv, "--device", "cpu"]) == 2, argv
        error = capsys.readouterr().err
        assert message in error and more in error, error
        assert len(error.strip().splitlines()) == 1 and "Traceback" not in error


def test_a_resumed_run_keeps_only_the_best_weights_it_had_saved_by_then(tmp_path):
    """--keep-best: a full set makes room by dropping its lowest score, by accuracy or by loss; weights
    kept after the step a run resumes from are deleted (the run earns them again)."""
    validated = {1: (0.5, 0.9), 2: (0.7, 1.2), 3: (0.6, 0.8), 4: (0.55, 1.0)}  # step: accuracy, loss
    for best_by, kept, first_rank in (("accuracy", [2, 3], 0.7), ("loss", [1, 3], -0.9)):
        folder = tmp_path / best_by
        folder.mkdir()
        scores: dict[int, float] = {}
        for step, (accuracy, loss) in validated.items():
            scores_now = {"val_accuracy": accuracy, "val_loss": loss}
            files.keep_best({"w": torch.zeros(1)}, step, scores_now, folder, scores, 2, best_by)
        assert [p.name for p in files.kept_best(folder)] == [f"best-{step}.pt" for step in kept]
        assert files.kept_scores_until(folder, 2, best_by) == {kept[0]: first_rank}
        assert [p.name for p in files.kept_best(folder)] == [f"best-{kept[0]}.pt"]


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


class FullDisk(io.StringIO):
    """metrics.jsonl on a disk that fills up after its first row."""

    def write(self, text: str) -> int:
        if self.getvalue():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(text)


@pytest.mark.parametrize("file", ["checkpoint-2.pt", "metrics.jsonl"])
def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(
    omniglot_train, tmp_path, monkeypatch, capsys, file
):
    run = tmp_path / "run"
    fsync, real_open = os.fsync, open

    def fsync_on_a_full_disk(descriptor: int) -> None:
        if os.readlink(f"/proc/self/fd/{descriptor}").endswith(f".{file}.part"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(descriptor)

    def open_on_a_full_disk(path, *args, **kwargs):
        return FullDisk() if Path(path).name == file else real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync_on_a_full_disk)
    monkeypatch.setattr(files, "open", open_on_a_full_disk, raising=False)
    flags = ["--steps", "3", "--checkpoint-every", "1", "--log-every", "1", *TINY]
    assert main(["train", *flags, "--out", str(run)]) == 2
    error = capsys.readouterr().err
    kept = {
        "checkpoint-2.pt": "checkpoint.pt (step 1) is kept",
        "metrics.jsonl": "the run's last checkpoint is kept, and --resume continues from it",
    }[file]
    assert error.strip() == (
        f"fewsight: error: could not write {run / file}: the disk is full (No space left on device); "
        f"free some space on that disk, or train into another --out on a disk with room; {kept}"
    )
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 1
    assert not list(run.glob("*.part")) and not list(run.glob(".*.part"))
    monkeypatch.undo()
    assert main(["train", *flags, "--out", str(run), "--resume"]) == 0  # once there is room again
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 3


def test_a_run_stopped_before_its_first_checkpoint_is_scored_by_no_one_and_says_how_to_go_on(
    three_checkpoints, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(three_checkpoints / "run3", run)
    for checkpoint in run.glob("checkpoint*.pt"):
        checkpoint.unlink()
    assert main(["eval", str(run), "--episodes", "2", "--quiet", "--device", "cpu"]) == 2
    assert f"continue it with fewsight train --resume --out {run}" in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "pretrain": {}}))  # as a pretrain run's
    assert main(["eval", str(run), "--episodes", "2", "--quiet", "--device", "cpu"]) == 2
    assert f"continue it with fewsight pretrain --resume --out {run}" in capsys.readouterr().err
