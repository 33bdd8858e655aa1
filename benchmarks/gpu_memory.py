"""Peak GPU memory of the one-task-at-a-time levers against learn2learn's, each variant in a process of
its own (nothing left over from earlier measurements), with cudnn.benchmark on and off.

Omniglot 5-way 1-shot second-order MAML, meta-batch 32, 5 inner steps: `--task-chunk 1` (vmap over
one task at a time), `--task-loop --task-chunk 1` (plain autograd, one task at a time) and
learn2learn (benchmarks/peers.py; must be installed). Usage on a GPU: python benchmarks/gpu_memory.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from fewsight.training import bench

VARIANTS = ("--task-loop --task-chunk 1", "--task-chunk 1", "learn2learn")


def measure(variant: str, cudnn_benchmark: bool) -> str:
    """One variant's table row: peak MiB (weights, meta-batch and step) and ms per meta-step."""
    torch.backends.cudnn.benchmark = cudnn_benchmark
    if variant == "learn2learn":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import peers

        case = bench.Case("omniglot", "maml", 5, 1, 32)
        implementation = peers.implementations(case)["learn2learn"]
    else:
        case = bench.Case("omniglot", "maml", 5, 1, 32, options=(("task_chunk", 1),))
        implementation = bench.fewsight_implementation(per_task=variant.startswith("--task-loop"))
    row = bench.measure(
        case, variant, implementation, torch.device("cuda"), repeats=3, max_seconds=2, check=False
    )
    state = "on" if cudnn_benchmark else "off"
    return f"| `{variant}` | {state} | {row.peak_mib:.0f} | {row.ms_per_step:.1f} |"


def main() -> None:
    if len(sys.argv) == 3:  # one variant, in this process
        print(measure(sys.argv[1], sys.argv[2] == "on"))
        return
    print("| variant | cudnn.benchmark | peak MiB | ms / meta-step |")
    print("|---|---|---|---|")
    for state in ("on", "off"):
        for variant in VARIANTS:
            run = [sys.executable, __file__, variant, state]
            print(subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
