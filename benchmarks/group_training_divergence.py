"""Where a torchrun group's CUDA-graph training parts from one process's, step by step: `fewsight
train` of second-order MAML on Omniglot (4 tasks a meta-batch, 3 steps) in a gloo group of 2 processes
sharing one GPU, then in one process, each step's weights before it, the meta-gradient it replayed
(after the group's average) and the weights after it, compared tensor by tensor. Written to explain
`test_torchrun_training_with_cuda_graphs_equals_one_process` (docs/BENCHMARKS.md, "torchrun").

Usage on a GPU: FEWSIGHT_DATA=DIR python benchmarks/group_training_divergence.py [--meta-optimizer sgd]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

if __package__ in (None, ""):  # run as a script: fewsight from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewsight.data.episodes import TaskBatch
from fewsight.run.config import RunConfig
from fewsight.training import metatrain
from fewsight.training.graphs import GraphedTrainingStep

SETTINGS = {"algorithm": "maml", "meta_batch": 4, "queries": 2, "steps": 3, "trainval": True}


def record_steps(out: Path) -> None:
    """Make every replayed step save (weights before, gradient, weights after, loss) to `out`."""
    replay = GraphedTrainingStep.__call__
    rows: list[dict] = []

    def call(step: GraphedTrainingStep, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        params = dict(step.learner.named_parameters())
        before = {n: p.detach().cpu().clone() for n, p in params.items()}
        result = replay(step, batch)
        grad = {n: p.grad.detach().cpu().clone() for n, p in params.items()}
        after = {n: p.detach().cpu().clone() for n, p in params.items()}
        rows.append({"before": before, "grad": grad, "after": after, "loss": float(result[0])})
        torch.save(rows, out)
        return result

    GraphedTrainingStep.__call__ = call


def train_in_group(rank: int, port: int, folder: str, settings: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.cuda.set_device(0)
    torch.backends.cudnn.allow_tf32 = False
    record_steps(Path(folder) / f"rank{rank}.pt")
    metatrain.train(
        RunConfig(**settings), Path(folder) / "two", device=torch.device("cuda", 0), progress=False
    )
    dist.destroy_process_group()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta-optimizer", choices=("adam", "sgd"), default="adam", help="(adam)")
    parser.add_argument("--port", type=int, default=31700, help="the group's port on 127.0.0.1 (31700)")
    args = parser.parse_args()
    settings = SETTINGS | {"meta_optimizer": args.meta_optimizer}
    print(torch.__version__, torch.cuda.get_device_name(), settings)
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(train_in_group, args=(args.port, folder, settings), nprocs=2)
        torch.backends.cudnn.allow_tf32 = False
        GraphedTrainingStep._choose_path = lambda step, saved: step._capture()  # the group's path
        record_steps(Path(folder) / "one.pt")
        metatrain.train(RunConfig(**settings), Path(folder) / "one", device="cuda", progress=False)
        one, group, other = (torch.load(Path(folder) / f"{name}.pt") for name in ("one", "rank0", "rank1"))
    print("relative distance of the group's tensors to one process's: weights before the step, its")
    print("meta-gradient, weights after it (largest absolute difference)")
    for number, (a, b, c) in enumerate(zip(one, group, other, strict=True), start=1):
        mean = (b["loss"] + c["loss"]) / 2  # each rank's loss is that of its own 2 tasks
        print(f"step {number}: loss {a['loss']:.6f} (one process) vs {mean:.6f} (the group's mean)")
        for name in a["grad"]:
            largest = float((b["after"][name] - a["after"][name]).abs().max())
            print(
                f"  {name:28s} before {relative(b['before'][name], a['before'][name]):.1e}"
                f"  gradient {relative(b['grad'][name], a['grad'][name]):.1e}"
                f"  after {relative(b['after'][name], a['after'][name]):.1e} ({largest:.1e})"
            )


if __name__ == "__main__":
    main()
