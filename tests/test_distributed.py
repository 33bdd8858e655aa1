"""Data-parallel meta-training: 2 CPU processes with gloo compute what one process computes."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fewsight
from fewsight.training.distributed import average_gradients, share
from tests.conftest import SHARED_DATA


def _gradient_in_process(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), FEWSIGHT_DATA=str(SHARED_DATA))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    learner = fewsight.MAML(fewsight.Conv4(5).double(), steps=2)
    sampler = fewsight.EpisodeSampler(fewsight.load_omniglot("train"), 5, 1, 2, dtype=torch.float64)
    learner.meta_loss(sampler.sample(4, sampler.generator(0), share(4))).loss.backward()
    average_gradients(learner.parameters())
    if rank == 0:
        torch.save(torch.cat([p.grad.flatten() for p in learner.parameters()]), out)
    dist.destroy_process_group()


def test_two_processes_give_the_single_process_meta_gradient(omniglot_train, tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.spawn(_gradient_in_process, args=(port, str(tmp_path / "gradient.pt")), nprocs=2)
    averaged = torch.load(tmp_path / "gradient.pt", weights_only=True)
    torch.manual_seed(0)
    learner = fewsight.MAML(fewsight.Conv4(5).double(), steps=2)
    sampler = fewsight.EpisodeSampler(omniglot_train, 5, 1, 2, dtype=torch.float64)
    learner.meta_loss(sampler.sample(4, sampler.generator(0))).loss.backward()
    single = torch.cat([p.grad.flatten() for p in learner.parameters()])
    assert (averaged - single).norm() / single.norm() < 1e-12


def assert_same_weights(one: dict, two: dict) -> None:
    """Equal to float32 rounding, except the convolution biases that feed batch norm: their exact
    gradient is zero, so the computed one is rounding noise, which Adam scales up to steps of
    ±learning rate whose signs depend on the order of the sums."""
    for name in one:
        if not name.endswith("conv.bias"):
            torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)


def _fewsight(args: list[str], processes: int, cwd) -> None:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [sys.executable, *(launcher if processes > 1 else []), "-m", "fewsight", *args]
    env = {**os.environ, "FEWSIGHT_DATA": str(SHARED_DATA), "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, cwd=cwd, env=env, capture_output=True, timeout=600)


def test_torchrun_training_and_evaluation_equal_one_process(omniglot_train, tmp_path):
    settings = [
        "--meta-batch",
        "4",
        "--queries",
        "2",
        "--steps",
        "3",
        "--log-every",
        "1",
        "--val-every",
        "3",
        "--val-episodes",
        "6",
        "--quiet",
        "--device",
        "cpu",
    ]
    _fewsight(["train", *settings, "--out", "one"], 1, tmp_path)
    _fewsight(["train", *settings, "--out", "two"], 2, tmp_path)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["learner"]
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["learner"]
    assert_same_weights(one, two)
    rows = [
        [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("one", "two")
    ]
    assert [r["step"] for r in rows[1]] == [1, 2, 3]  # written once, by rank 0
    for a, b in zip(*rows, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        if "val_accuracy" in a:  # validation episodes split across the 2 processes, gathered
            assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1e-9)
    # resuming at another world size continues the same run
    longer = ["train", "--steps", "4", "--resume", "--quiet", "--device", "cpu", "--out"]
    _fewsight([*longer, "two"], 1, tmp_path)
    _fewsight([*longer, "one"], 2, tmp_path)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["learner"]
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["learner"]
    assert_same_weights(one, two)
