"""What the ResNet-12 pass benchmarks (bn_groups.py, stage_step.py) share: their flags for the network
and the machine, and the timing of cases in alternation, round by round, so that every case sees the
same load on a noisy machine."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Hashable

import torch


def add_arguments(parser: argparse.ArgumentParser, width: float, rounds: int) -> None:
    """--width, --size, --rounds, --device and --threads."""
    parser.add_argument("--width", type=float, default=width, help="of the ResNet-12 (1: 64-128-256-512)")
    parser.add_argument("--size", type=int, default=80, help="side of the random images, in pixels")
    parser.add_argument("--rounds", type=int, default=rounds, help="timings of each case (their median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")


def start(args: argparse.Namespace) -> torch.device:
    """The parsed flags' device, with their thread count and a fixed seed set."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def median_times(cases: dict[Hashable, Callable[[], float]], rounds: int) -> dict[Hashable, float]:
    """Each case's median of `rounds` calls (each returns its own time), after one warm-up call each
    (cuDNN's kernel choice, lazy initialisation), the cases alternating within every round."""
    for timed in cases.values():
        timed()
    times: dict[Hashable, list[float]] = {case: [] for case in cases}
    for _ in range(rounds):
        for case, timed in cases.items():
            times[case].append(timed())
    return {case: statistics.median(values) for case, values in times.items()}
