"""A real training process killed with SIGKILL, twice, resumes to the same run, bit for bit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import metrics, same

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "train",
    "--steps",
    "12",
    "--meta-batch",
    "2",
    "--queries",
    "2",
    "--log-every",
    "2",
    "--val-every",
    "4",
    "--val-episodes",
    "2",
    "--checkpoint-every",
    "1",
    "--quiet",
    "--device",
    "cpu",
]
# `python -m fewsight` with os.fsync replaced by one that sends the process SIGKILL at its Nth call:
# a kill at an exact moment inside the writing of a checkpoint.
KILLED_AT_FSYNC = """
import os, runpy, signal, sys
calls, fatal, fsync = 0, int(sys.argv[1]), os.fsync
def dying_fsync(fd):
    global calls
    calls += 1
    if calls == fatal:
        os.kill(os.getpid(), signal.SIGKILL)
    fsync(fd)
os.fsync = dying_fsync
sys.argv = ["fewsight", *sys.argv[2:]]
runpy.run_module("fewsight", run_name="__main__")
"""
pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")


def fewsight(*argv: str | Path) -> list[str]:
    return [sys.executable, "-m", "fewsight", *map(str, argv)]


def environment() -> dict[str, str]:
    """This process's environment (data and cache folders) with this checkout first on the path."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def step(path: Path) -> int:
    return torch.load(path, weights_only=True)["step"]


def test_sigkill_at_any_moment_then_resume_ends_with_the_same_weights(omniglot_train, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    env = environment()
    subprocess.run(fewsight(*FLAGS, "--out", whole), env=env, check=True, timeout=300)

    # 1. Killed while writing checkpoint.pt of step 2, after its metrics row (fsyncs: 2 for
    #    config.json, then 4 a checkpoint: checkpoint-N.pt and its folder, checkpoint.pt and its folder).
    argv = [sys.executable, "-c", KILLED_AT_FSYNC, "9", *FLAGS, "--out", str(killed)]
    assert subprocess.run(argv, env=env, timeout=300).returncode == -signal.SIGKILL
    assert step(killed / "checkpoint.pt") == 1 and step(killed / "checkpoint-2.pt") == 2

    # 2. Resumed, then killed at whatever it is doing once the checkpoint of step 6 appears.
    process = subprocess.Popen(fewsight(*FLAGS, "--out", killed, "--resume"), env=env)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint-6.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.kill()
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert 5 <= step(killed / "checkpoint.pt") < 12

    # 3. Resumed to the end: the same files, weights, optimiser state and metrics.
    subprocess.run(fewsight(*FLAGS, "--out", killed, "--resume"), env=env, check=True, timeout=300)
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in whole.iterdir())
    for name in ("checkpoint.pt", "checkpoint-10.pt", "checkpoint-11.pt", "checkpoint-12.pt"):
        assert same(torch.load(whole / name, weights_only=True), torch.load(killed / name, weights_only=True))
    assert metrics(killed) == metrics(whole)
