"""Meta-training throughput on 1 and 2 GPUs (data-parallel over the meta-batch, torchrun + NCCL).

Usage: python benchmarks/scaling.py RUNS_DIR --steps 300 -- <fewsight train flags without --out>
Trains the same run with 1 and then 2 processes, reads tasks per second from each run's
metrics.jsonl (the median over logging intervals, the first, warm-up interval left out) and prints a
Markdown row: tasks/s on 1 GPU, on 2 GPUs, the speed-up and the scaling efficiency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def throughput(run: Path) -> float:
    """Median tasks per second of a run's logging intervals after the first."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(row["tasks_per_s"] for row in rows[1:])


def train(processes: int, out: Path, flags: list[str]) -> float:
    """Wall seconds of one training with `processes` GPUs."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "fewsight",
        "train",
    ]
    start = time.perf_counter()
    subprocess.run([*command, *flags, "--quiet", "--out", str(out)], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then fewsight train's flags")
    args = parser.parse_args()
    flags = [flag for flag in args.flags if flag != "--"]
    speeds, walls = {}, {}
    for processes in (1, 2):
        walls[processes] = train(processes, args.runs / f"gpus{processes}", flags)
        speeds[processes] = throughput(args.runs / f"gpus{processes}")
    speedup = speeds[2] / speeds[1]
    print(
        f"| `{' '.join(flags)}` | {speeds[1]:.0f} | {speeds[2]:.0f} | {speedup:.2f}x | {speedup / 2:.0%} "
        f"| {walls[1]:.0f} s / {walls[2]:.0f} s |",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
