"""fewsight bench: time meta-steps of every algorithm and implementation (fewsight.training.bench)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fewsight.cli.common import device_flag, pick_device
from fewsight.errors import FewsightError
from fewsight.run.config import ALGORITHMS


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="time meta-steps of every algorithm and implementation",
        description="Median time per meta-step, tasks per second, peak GPU memory and time to the first "
        "step, on random images of each data set's shape, after checking each implementation's "
        "meta-gradient against the float64 per-task reference; then the episode sampler's speed.",
    )
    parser.add_argument("--dataset", nargs="+", choices=("omniglot", "miniimagenet"), help="default: both")
    parser.add_argument("--algorithm", nargs="+", choices=ALGORITHMS, help="default: all")
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed meta-steps per row (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    device_flag(parser)


def run(args: argparse.Namespace) -> None:
    from fewsight.training import bench

    if args.repeats < 3:
        raise FewsightError("--repeats must be at least 3")
    device = pick_device(args.device)
    cases = bench.select(bench.SUITE, args.dataset, args.algorithm)
    rows = bench.run_suite(
        cases, device, repeats=args.repeats, report=lambda row: print(bench.markdown([row]).splitlines()[-1])
    )
    print("\n" + bench.markdown(rows))
    for tasks in (32, 1024):
        speed = bench.sampler_speed(device, tasks)
        print(f"episode sampler: {speed:,.0f} Omniglot episodes/s in meta-batches of {tasks}")
    if args.json:
        args.json.write_text(json.dumps(bench.as_dicts(rows), indent=1) + "\n")
