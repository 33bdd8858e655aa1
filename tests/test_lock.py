"""One process at a time trains into a run folder: a second is refused in one line naming the folder
and the process that holds it; the lock of a process killed with SIGKILL is taken over."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fewsight.cli import main
from fewsight.run.lock import LOCK

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "2", "--meta-batch", "1", "--queries", "1", "--trainval", "--quiet", "--device", "cpu"]
# A process that holds a run folder the way `fewsight train` does, until it is killed.
HOLDER = """
import sys, time
from pathlib import Path
from fewsight.run.lock import run_folder_lock
with run_folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(300)
"""
pytestmark = pytest.mark.skipif(os.name != "posix", reason="the lock is an flock, POSIX")


def hold(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`, once this returns."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    return holder


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_training_into_a_held_folder_is_refused_until_its_holder_is_killed(
    omniglot_train, tmp_path, capsys, resume
):
    run = tmp_path / "run"
    if resume:
        assert main(["train", *TINY, "--out", str(run)]) == 0
        before = {p.name: p.read_bytes() for p in run.iterdir()}
    holder = hold(run)
    try:
        argv = ["train", *TINY, "--out", str(run), *(["--resume", "--steps", "3"] if resume else [])]
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert error.strip() == (
            f"fewsight: error: {run} is in use: process {holder.pid} is training into it (it holds "
            f"{run / LOCK}); wait for it to end, or choose another --out"
        )
        if resume:  # the held run is untouched
            assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK} == before
        else:
            assert not (run / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL left the lock file, naming a process that is gone: the next training takes it over
    assert (run / LOCK).read_text().split()[0] == str(holder.pid)
    assert main(argv) == 0
    assert not (run / LOCK).exists()  # released when the training ends


def test_a_lock_file_of_a_process_that_ended_is_taken_over(omniglot_train, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (run / LOCK).write_text(f"{ended.stdout.strip()} {os.uname().nodename}\n")
    assert main(["train", *TINY, "--out", str(run)]) == 0
    assert capsys.readouterr().err == "" and not (run / LOCK).exists()


def test_a_training_that_fails_before_writing_leaves_no_folder(tmp_path, capsys):
    run = tmp_path / "new" / "run"
    assert main(["train", *TINY, "--resume", "--out", str(run)]) == 2
    assert "config.json" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_second_real_training_into_the_same_folder_is_refused(omniglot_train, tmp_path, capsys):
    run = tmp_path / "run"
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    flags = [*TINY[2:], "--steps", "1000000", "--checkpoint-every", "1"]
    first = subprocess.Popen(
        [sys.executable, "-m", "fewsight", "train", *flags, "--out", str(run)],
        env={**os.environ, "PYTHONPATH": path},
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint-1.pt").exists():  # training, and writing its checkpoints
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for resume in ([], ["--resume"]):
            assert main(["train", *flags, "--out", str(run), *resume]) == 2
            error = capsys.readouterr().err
            assert f"{run} is in use: process {first.pid} is training into it" in error
            assert len(error.strip().splitlines()) == 1
        assert first.poll() is None  # the first goes on undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
