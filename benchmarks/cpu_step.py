"""The eager MAML meta-step on the CPU (2 threads): a tiny one (4 tasks, 1 query per class), which
measures mostly Python and dispatch overhead, and Omniglot 5-way 1-shot with 8 tasks and 15 queries
per class. Median of 15 and 7 steps after warm-up. Usage: python benchmarks/cpu_step.py
"""

from __future__ import annotations

import statistics
import time

import torch

from fewsight.training import bench


def median_ms(case: bench.Case, repeats: int) -> float:
    torch.manual_seed(0)
    learner = bench.build_learner(case.config())
    learner.per_task = False
    batch = bench.meta_batch(case, case.meta_batch, torch.device("cpu"), torch.float32)

    def step() -> None:
        learner.zero_grad()
        learner.meta_loss(batch).loss.backward()

    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    tiny = median_ms(bench.Case("omniglot", "maml", 5, 1, 4, queries=1), 15)
    print(f"tiny meta-step (4 tasks, 1 query per class): {tiny:.0f} ms")
    full = median_ms(bench.Case("omniglot", "maml", 5, 1, 8), 7)
    print(f"Omniglot 5-way 1-shot, 8 tasks, 15 queries per class: {full:.0f} ms")


if __name__ == "__main__":
    main()
