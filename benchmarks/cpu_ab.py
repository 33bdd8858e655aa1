"""A/B of the eager meta-step of two fewsight checkouts on the CPU (or --device), in one process.

Both checkouts are imported into this process (the second after the first's modules are dropped;
each learner keeps its own code), and their meta-steps alternate, so that both see the same load:
on a shared machine a paired ratio is steadier than two runs' times. MAML on Omniglot 5-way 1-shot,
15 queries per class, 5 inner steps by default, random images (no data needed). Prints the median
step of each and the median of the paired ratios.

Usage: python benchmarks/cpu_ab.py OLD_CHECKOUT NEW_CHECKOUT [--tasks 2] [--width 0.0625]
[--task-chunk 0] [--rounds 21] [--algorithm maml] [--dataset omniglot] [--backbone conv4] [--inner-steps 5]
[--queries 15] [--threads 1] [--meta-step N] [--set KEY=VALUE ...] (other RunConfig settings, e.g. --set
inner_optimizer=adam; a VALUE that reads as JSON is taken as such) [--device cpu] (on a GPU each
step is timed to its end, synchronised). A checkout is a directory holding `fewsight/` (for an old
commit: `git archive COMMIT | tar -x -C DIR`). Width 0.0625 (4 channels) makes the step mostly Python.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def load_step(checkout: str, args: argparse.Namespace) -> Callable[[], None]:
    """One meta-step (loss and backward) of a learner built by `checkout`'s code."""
    for name in [m for m in sys.modules if m == "fewsight" or m.startswith("fewsight.")]:
        del sys.modules[name]
    sys.path.insert(0, checkout)
    try:  # fewsight.training.bench since the package was split; fewsight.bench before
        layout = (
            "fewsight.training.bench" if (Path(checkout) / "fewsight/training").is_dir() else "fewsight.bench"
        )
        bench = importlib.import_module(layout)
    finally:
        sys.path.remove(checkout)
    options = (
        ((("width", args.width),) if args.width != 1 else ())
        + ((("task_chunk", args.task_chunk),) if args.task_chunk else ())
        + tuple(setting(text) for text in args.set)
    )
    case = bench.Case(
        args.dataset, args.algorithm, 5, 1, args.tasks, args.inner_steps, args.queries, args.backbone, options
    )
    torch.manual_seed(0)
    device = torch.device(args.device)
    learner = bench.build_learner(case.config()).to(device)
    learner.per_task = False
    if args.meta_step:
        learner.schedule(args.meta_step)  # schedules by meta-step: MAML++'s multi-step loss, derivative order
    batch = bench.meta_batch(case, args.tasks, device, torch.float32)

    def step() -> None:
        learner.zero_grad()
        learner.meta_loss(batch).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def setting(text: str) -> tuple[str, object]:
    """KEY=VALUE as (key, value), the value parsed as JSON where it is (numbers, true), else a string."""
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--width", type=float, default=0.0625)
    parser.add_argument("--task-chunk", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--algorithm", default="maml")
    parser.add_argument("--dataset", default="omniglot", choices=["omniglot", "miniimagenet"])
    parser.add_argument("--backbone", default="conv4", choices=["conv4", "resnet12"])
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--meta-step", type=int, default=0, help="time the step at this meta-step (1: the first)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkouts = {"old": args.old, "new": args.new}
    steps = {name: load_step(path, args) for name, path in checkouts.items()}
    for step in steps.values():  # warm-up
        step()
        step()
    times: dict[str, list[float]] = {"old": [], "new": []}
    for round_ in range(args.rounds):
        for name in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    old, new = (1000 * statistics.median(times[name]) for name in ("old", "new"))
    ratio = statistics.median(n / o for o, n in zip(times["old"], times["new"], strict=True))
    print(
        f"{args.algorithm} on {args.dataset}, {args.tasks} tasks, {args.inner_steps} inner steps, "
        f"{args.queries} queries, width {args.width}, task chunk {args.task_chunk}, {args.device}: "
        f"old {old:.1f} ms, new {new:.1f} ms, paired new/old {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
