"""Data-parallel meta-training: 2 processes with gloo compute what one process computes (on the CPU;
with CUDA graphs, on a GPU, where 2 processes may share one card)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fewsight
from fewsight.run.algorithms import mamlpp_preset
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.training import graphs, metatrain
from fewsight.training.distributed import average_gradients, share
from fewsight.training.graphs import GraphedTrainingStep, set_learning_rate
from fewsight.training.schedules import cosine_lr
from tests.conftest import SHARED_DATA, capture_eagerly

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


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


def _fewsight(args: list[str], processes: int, cwd) -> str:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [sys.executable, *(launcher if processes > 1 else []), "-m", "fewsight", *args]
    env = {**os.environ, "FEWSIGHT_DATA": str(SHARED_DATA), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, check=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return done.stdout


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
    # each episode's score comes back in episode order from the 2 processes' interleaved meta-batches
    scoring = ["eval", "one", "--episodes", "7", "--batch", "2", "--json", "--quiet", "--device", "cpu"]
    alone, split = (json.loads(_fewsight(scoring, processes, tmp_path)) for processes in (1, 2))
    assert len(split["per_episode"]) == 7
    assert split["per_episode"] == pytest.approx(alone["per_episode"], abs=1e-6)
    assert len(set(alone["per_episode"])) > 1  # so that a wrong order would show
    # resuming at another world size continues the same run
    longer = ["train", "--steps", "4", "--resume", "--quiet", "--device", "cpu", "--out"]
    _fewsight([*longer, "two"], 1, tmp_path)
    _fewsight([*longer, "one"], 2, tmp_path)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["learner"]
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["learner"]
    assert_same_weights(one, two)


def _join(rank: int, port: int, where: str) -> torch.device:
    """Join a gloo group of 2 as `rank`; this process's device: the CPU, or with where="cuda" a GPU
    of its own where there are two, else cuda:0 for both."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), FEWSIGHT_DATA=str(SHARED_DATA))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    if where == "cpu":
        return torch.device("cpu")
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def _train_mamlpp(device: torch.device, graphed: bool) -> dict[str, torch.Tensor]:
    """3 steps of MAML++ in float64 on this process's share of meta-batches of 4 tasks, through a
    GraphedTrainingStep or eagerly; the weights. Its schedules change the loss weights and the
    learning rate at every step and switch to second order at step 3, which records the step again."""
    config = RunConfig(algorithm="mamlpp", inner_steps=2, steps=3, multi_step_loss=2, first_order_steps=2)
    mamlpp_preset(config)
    torch.manual_seed(0)
    learner = build_learner(config).to(device, torch.float64)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3, capturable=device.type == "cuda")
    sampler = fewsight.EpisodeSampler(fewsight.load_omniglot("train"), 5, 1, 2, device, torch.float64)
    generator = sampler.generator(0)
    step = None
    for number in range(1, config.steps + 1):
        batch = sampler.sample(4, generator, share(4))
        learner.schedule(number)
        set_learning_rate(optimizer, cosine_lr(1e-3, number, config.steps))
        if graphed:
            step = step or GraphedTrainingStep(learner, optimizer, batch)
            step(batch)
        else:
            optimizer.zero_grad()
            learner.meta_loss(batch).loss.backward()
            optimizer.step()
    return learner.state_dict()


def _graphed_training_in_process(rank: int, port: int, where: str, out: str) -> None:
    device = _join(rank, port, where)
    if device.type == "cpu":
        graphs.capture = capture_eagerly  # this spawned process's own module
    weights = _train_mamlpp(device, graphed=True)
    if rank == 0:
        torch.save(weights, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("where", ["cpu", pytest.param("cuda", marks=cuda)])
def test_graphed_steps_of_two_processes_equal_one_eager_process(omniglot_train, tmp_path, where):
    """Each process records its own step, and the meta-gradients are averaged between the replay of
    its gradient and that of the optimiser step. On the CPU the graphs are stood in for by reruns of
    the recorded step, which checks the order of the work and that recording leaves the weights as
    they were; on a GPU (2 processes may share one) they are CUDA graphs."""
    port = 30500 + os.getpid() % 1000  # a range of its own: the tests' groups never share a port
    mp.spawn(_graphed_training_in_process, args=(port, where, str(tmp_path / "weights.pt")), nprocs=2)
    two = torch.load(tmp_path / "weights.pt", weights_only=True)
    one = _train_mamlpp(torch.device(where), graphed=False)
    for name, value in one.items():
        if not name.endswith("conv.bias"):  # exact gradient 0 before batch norm: Adam steps on noise
            torch.testing.assert_close(two[name].to(value.device), value, rtol=1e-9, atol=1e-9)


def _eager_step_refused(*args: object) -> None:
    raise AssertionError("the eager step ran: the CUDA graph was not recorded")


def _train_in_process(rank: int, port: int, settings: dict, out: str) -> None:
    device = _join(rank, port, "cuda")
    torch.backends.cudnn.allow_tf32 = False  # float32 convolutions: the two runs agree to rounding
    metatrain._eager_step = _eager_step_refused
    metatrain.train(RunConfig(**settings), out, device=device, progress=False)
    dist.destroy_process_group()


@cuda
def test_torchrun_training_with_cuda_graphs_equals_one_process(omniglot_train, tmp_path, monkeypatch):
    """`train` under a process group of 2 (gloo, one GPU may hold both) takes the graphed step, and
    its weights equal those of one process with the same meta-batch and seed.

    With SGD as the meta-optimiser: on a GPU the 2-task and 4-task kernels round differently, and
    Adam turns those float32 differences into different steps wherever a gradient is at the noise
    level (its update is lr * g / (|g| + eps)); second-order MAML then amplifies them step by step
    (on an H100 the two runs' meta-gradients differed by 1e-6, 3e-2 and 3e-1, relative, at steps
    1 to 3 with Adam, `benchmarks/group_training_divergence.py`). SGD passes the rounding on as it
    is, so that equality to float32 rounding is the property tested; Adam inside the group's graphs
    is tested in float64 (MAML++, above)."""
    settings = {"algorithm": "maml", "meta_batch": 4, "queries": 2, "steps": 3, "trainval": True}
    settings |= {"meta_optimizer": "sgd"}
    port = 31500 + os.getpid() % 1000
    mp.spawn(_train_in_process, args=(port, settings, str(tmp_path / "two")), nprocs=2)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    # The group's processes take the replayed path untimed; so does the one process here, so that
    # both run the same kernels.
    monkeypatch.setattr(GraphedTrainingStep, "_choose_path", lambda step, saved: step._capture())
    metatrain.train(RunConfig(**settings), tmp_path / "one", device="cuda", progress=False)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["learner"]
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["learner"]
    assert_same_weights(one, two)
