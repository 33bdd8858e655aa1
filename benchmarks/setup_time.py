"""Where the first meta-step's time goes in benchmarks/time_to_accuracy.py's race (issue 25's time to
98%): the set-up that the race's clock holds, split by running the first step twice in one process.

Usage on the GPU machine: python benchmarks/setup_time.py [--meta-batch 16] [--no-cudnn-benchmark]

`cold` is the race's first step in a fresh process: the learner's float64 self-check (its vectorised
meta-gradient against the per-task loop's, once per learner), on a GPU the graphed step's
construction (each of MAML's two paths recorded after warm-up steps and timed, the faster kept),
cuDNN's kernel search on every new shape and the loading of every kernel on its first use. `warm` is
the same first step of a second, fresh learner in the same process, where the searched kernels and
loaded code are kept. `step` is that learner's later steps' mean. So cold − warm is the one-time cost
of the process (search, loading), and warm − step the cost of the self-check and the recording.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks.time_to_accuracy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.time_to_accuracy import (
    DEFAULT_META_BATCH,
    PAPER,
    fewsight_contestant,
    maml_config,
    synchronize,
)
from fewsight.data import EpisodeSampler
from fewsight.run.build import load_split
from fewsight.training.device import default_device


def timed(step, batch, device: torch.device) -> float:
    """Seconds of one call of `step(batch)`, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    step(batch)
    synchronize(device)
    return time.perf_counter() - start


def measure(config, device: torch.device, data_root: str | None = None, steps: int = 20) -> dict:
    """The cold first step, the warm first step and the mean later step, in seconds (see above)."""
    sampler = EpisodeSampler(
        load_split(config, "train", data_root), config.ways, config.shots, config.queries, device
    )
    generator = sampler.generator(config.seed)
    batch = sampler.sample(config.meta_batch, generator)
    cold = timed(fewsight_contestant(config, device).step, batch, device)
    contestant = fewsight_contestant(config, device)
    warm = timed(contestant.step, batch, device)
    later = [
        timed(contestant.step, sampler.sample(config.meta_batch, generator), device) for _ in range(steps)
    ]
    return {"cold": cold, "warm": warm, "step": sum(later) / len(later)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(PAPER), default="omniglot", help="(omniglot)")
    parser.add_argument("--data-root", help="the data set's folder (default: the usual data roots)")
    parser.add_argument("--meta-batch", type=int, help="tasks per meta-step (32 Omniglot, 4 miniImageNet)")
    parser.add_argument("--steps", type=int, default=20, help="later steps averaged (20)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cuDNN's kernel search on each new shape, as `fewsight train` (on)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or (args.meta_batch is not None and args.meta_batch < 1):
        parser.error("--steps and --meta-batch must be positive")
    device = torch.device(args.device) if args.device else default_device()
    meta_batch = args.meta_batch or DEFAULT_META_BATCH[args.dataset]
    config = maml_config(meta_batch, seed=0, cuda_graphs=device.type == "cuda", dataset=args.dataset)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    seconds = measure(config, device, args.data_root, args.steps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        json.dumps(
            {
                "device": name,
                "torch": torch.__version__,
                "meta_batch": meta_batch,
                "cudnn_benchmark": args.cudnn_benchmark,
                **seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
