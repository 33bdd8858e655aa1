"""The `fewsight` command: one module per command, each its parser (`add_parser`) and its runner
(`run`), a thin layer over the library; `common` holds what they share."""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings

from fewsight.cli import bench, evaluate, export, plot, predict, pretrain, serve, train
from fewsight.errors import FewsightError

COMMANDS = {
    "train": train,
    "pretrain": pretrain,
    "eval": evaluate,
    "predict": predict,
    "export": export,
    "plot": plot,
    "bench": bench,
    "serve": serve,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewsight", description="Few-shot recognition by meta-learning.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv`; returns the exit status (2 for a problem it explains on stderr)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run_command(args)


def _show_warning(message: Warning | str, *_: object, **__: object) -> None:
    """A warning on one line, as an error is (no file name or source line)."""
    print(f"fewsight: warning: {message}", file=sys.stderr)


def _interrupted(args: argparse.Namespace, step: int | None) -> str:
    """What an interrupted command saved, and the exact command that continues it."""
    if args.command not in ("train", "pretrain"):
        return "interrupted"
    again = f"fewsight {args.command} --resume --out {shlex.quote(str(args.out))}"
    if step is None:  # stopped at once (a second Ctrl-C) or before training began
        return f"interrupted; continue from the last checkpoint, if one was saved, with: {again}"
    return f"interrupted; checkpoint.pt holds step {step:,}; continue from it with: {again}"


def _run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; returns the exit status (2 for a problem it explains on stderr)."""
    try:
        COMMANDS[args.command].run(args)
    except (FewsightError, OSError) as error:  # OSError: a full disk, a folder that cannot be written
        print(f"fewsight: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"fewsight: {_interrupted(args, getattr(interrupt, 'step', None))}", file=sys.stderr)
        return 130
    return 0
