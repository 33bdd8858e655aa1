"""Regenerate docs/BENCHMARKS.md's measured tables: `python benchmarks/run.py` on the GPU machine.

Runs fewsight's benchmark suite (fewsight/training/bench.py), the peers of benchmarks/peers.py where they are
installed, the episode sampler's speed and a profile of one MAML meta-step, and writes them between
the markers in docs/BENCHMARKS.md (or --doc), with the hardware, the date and the wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from fewsight.training import bench

HERE = Path(__file__).resolve().parent


def markers(datasets: list[str] | None) -> tuple[str, str]:
    """The comments around the block this run writes: one block per data set selection, so that the
    suite can run in parts on a machine whose commands are time-limited."""
    name = "bench" + ("" if datasets is None else ":" + "+".join(datasets))
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def peer_implementations() -> Callable[[bench.Case], dict[str, bench.Implementation]]:
    """The peers' implementations for a case (second-order MAML only), or none when not installed."""
    sys.path.insert(0, str(HERE))
    try:
        import peers
    except ImportError as error:
        print(f"peers skipped: {error}")
        return lambda case: {}
    return lambda case: peers.implementations(case) if case.backbone == "conv4" and not case.options else {}


def kernel_table(
    step: Callable[[], object], label: str, per: str = "step", steps: int = 5, top: int = 12, width: int = 70
) -> str:
    """A table of the CUDA kernels where `step` spends its GPU time, per call (names cut to `width`),
    after three calls of warm-up; `label` names what is profiled and `per` a call of it."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
    total = sum(e.device_time_total for e in events)
    kernels = sum(e.count for e in events) // steps
    lines = [
        f"Profile of {label}: {kernels} kernel launches and {total / steps / 1000:.1f} ms of GPU time "
        f"per {per}.",
        "",
        f"| kernel | share of GPU time | calls per {per} |",
        "|---|---|---|",
    ]
    for event in sorted(events, key=lambda e: -e.device_time_total)[:top]:
        name = event.key if len(event.key) < width else event.key[: width - 3] + "..."
        lines.append(f"| `{name}` | {100 * event.device_time_total / total:.1f}% | {event.count // steps} |")
    return "\n".join(lines) + "\n"


def profile(device: torch.device, case: bench.Case, top: int = 12, width: int = 70) -> str:
    """`kernel_table` of one vmapped meta-step of the case."""
    torch.manual_seed(0)
    learner = bench.build_learner(case.config()).to(device)
    step = bench.fewsight_implementation(per_task=False)(
        learner, bench.meta_batch(case, case.meta_batch, device, torch.float32)
    )
    label = f"{case.name}, {case.algorithm}, fewsight vmap"
    return kernel_table(step, label, per="meta-step", top=top, width=width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=HERE.parent / "docs" / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--dataset", nargs="+", help="only these data sets")
    parser.add_argument("--algorithm", nargs="+", help="only these algorithms")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=2.0, help="timing per row, at least 3 steps")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as `fewsight train` does on a GPU
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    cases = bench.select(bench.SUITE, args.dataset, args.algorithm)
    rows = bench.run_suite(
        cases,
        device,
        peer_implementations(),
        args.repeats,
        args.max_seconds,
        report=lambda r: print(bench.markdown([r]).splitlines()[-1], flush=True),
    )
    speeds = {tasks: bench.sampler_speed(device, tasks) for tasks in (32, 1024)}
    profiled = profile(device, bench.Case("omniglot", "maml", 5, 1, 32))
    wall = time.perf_counter() - clock
    header = (
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {torch.cuda.get_device_name(device)}, "
        f"torch {torch.__version__}, Python {platform.python_version()}, cudnn.benchmark on; "
        f"`python benchmarks/run.py` took {wall:.0f} s.\n"
    )
    sampler = "\n".join(
        f"- episode sampler, meta-batches of {t}: {s:,.0f} Omniglot 5-way 1-shot episodes per second"
        for t, s in speeds.items()
    )
    start, end = markers(args.dataset)
    block = f"{start}\n{header}\n{bench.markdown(rows)}\n{sampler}\n\n{profiled}{end}"
    text = args.doc.read_text() if args.doc.is_file() else "# Benchmarks\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    args.doc.write_text(before + block + after)
    if args.json:
        args.json.write_text(json.dumps({"rows": bench.as_dicts(rows), "sampler": speeds}, indent=1) + "\n")
    print(block)


if __name__ == "__main__":
    main()
