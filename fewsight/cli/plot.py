"""fewsight plot: PNG files of what a run learned (fewsight.use.plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fewsight.cli.common import data_flags, pick_device


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "plot",
        help="PNG files of what a run learned",
        description="Write curves.png (learning curves), episode.png (a test episode with each query's "
        "prediction marked right or wrong) and, for the MAML family, steps.png (accuracy against "
        "the number of adaptation steps) into --out.",
    )
    parser.add_argument("run", help="run folder or bundled model name")
    parser.add_argument("--out", type=Path, help="folder for the PNG files (default: RUN/plots, or ./plots)")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"), help="episodes' split")
    parser.add_argument("--max-steps", type=int, default=10, help="steps.png: up to this many inner steps")
    parser.add_argument("--episodes", type=int, default=100, help="steps.png: episodes per point")
    data_flags(parser)


def run(args: argparse.Namespace) -> None:
    from fewsight.use.plot import plot_run

    device = pick_device(args.device)
    written = plot_run(
        args.run, device, args.out, args.split, args.max_steps, args.episodes, args.data_root, not args.quiet
    )
    print("wrote " + ", ".join(str(path) for path in written))
