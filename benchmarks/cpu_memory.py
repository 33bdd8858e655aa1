"""Peak memory of one Omniglot MAML meta-step on the CPU, for each memory lever: the whole meta-batch
in one vmap, tasks in chunks, and plain autograd one task at a time (the way learn2learn works).

Each variant runs in a process of its own, whose peak resident memory (ru_maxrss) is the measure; the
GPU figures are in docs/BENCHMARKS.md. Usage: python benchmarks/cpu_memory.py
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import torch

from fewsight.training import bench

VARIANTS = [(0, "vmap"), (8, "vmap"), (1, "vmap"), (1, "per-task loop"), (0, "per-task loop")]


def measure(chunk: int, implementation: str) -> str:
    """One meta-step of second-order MAML, Omniglot 5-way 1-shot, meta-batch 32, 5 inner steps."""
    options = (("task_chunk", chunk),) if chunk else ()
    case = bench.Case("omniglot", "maml", 5, 1, 32, options=options)
    torch.manual_seed(0)
    learner = bench.build_learner(case.config())
    batch = bench.meta_batch(case, case.meta_batch, torch.device("cpu"), torch.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step = bench.fewsight_implementation(per_task=implementation == "per-task loop")(learner, batch)
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"| {chunk or 'all'} | {implementation} | {peak:.0f} | {peak - before:.0f} | {seconds:.1f} |"


def main() -> None:
    if len(sys.argv) == 3:  # one variant, in this process
        print(measure(int(sys.argv[1]), sys.argv[2]))
        return
    print("| tasks per chunk | implementation | peak RSS (MiB) | added by the step (MiB) | step (s) |")
    print("|---|---|---|---|---|")
    for chunk, implementation in VARIANTS:
        run = [sys.executable, __file__, str(chunk), implementation]
        print(subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
