"""The `fewsight` command: a thin layer over the Python API (train, eval)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

from fewsight.errors import FewsightError
from fewsight.runs import ALGORITHMS, DATASETS, RunConfig

_DEFAULTS = RunConfig()
_HELP = {
    "dataset": "data set to meta-train on",
    "protocol": "class split of the data set: maml (1,200 training characters with rotations) or lake",
    "image_size": "images are resized to this square size",
    "algorithm": "meta-learning algorithm",
    "ways": "classes per task (N)",
    "shots": "labelled support images per class (K)",
    "queries": "query images per class (Q)",
    "meta_batch": "tasks per meta-update (T)",
    "steps": "meta-updates in all (raise it with --resume to train longer)",
    "inner_lr": "step size of the inner gradient steps",
    "inner_steps": "inner gradient steps while meta-training",
    "eval_inner_steps": "inner gradient steps at validation and test time",
    "meta_lr": "Adam's learning rate for the meta-update",
    "seed": "seed of the initialisation and of the training episodes",
    "val_every": "validate every this many steps",
    "val_episodes": "validation episodes (fixed)",
    "log_every": "write a metrics line every this many steps",
    "checkpoint_every": "save a checkpoint every this many steps",
}


def _train_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="meta-train a model into a run folder",
        description="Meta-train a model; writes config.json, metrics.jsonl and checkpoint.pt into --out.",
    )
    choices = {"dataset": DATASETS, "algorithm": ALGORITHMS, "protocol": ("maml", "lake")}
    for field in fields(RunConfig):
        if field.name not in _HELP:
            continue
        default = getattr(_DEFAULTS, field.name)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(default),
            default=default,
            choices=choices.get(field.name),
            help=f"{_HELP[field.name]} (default: %(default)s)",
        )
    parser.add_argument(
        "--non-transductive",
        action="store_true",
        help="normalise queries with the support set's batch statistics, not their own",
    )
    parser.add_argument(
        "--trainval",
        action="store_true",
        help="train on train+val classes (the papers' protocol) and skip validation",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs that support it)")
    parser.add_argument("--out", type=Path, required=True, help="run folder to create (or continue)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    _common(parser)


def _eval_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="accuracy of a trained run on fixed test episodes",
        description="Accuracy ± 95% confidence interval on fixed episodes.",
    )
    parser.add_argument("run", type=Path, help="run folder written by fewsight train")
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes (default: %(default)s)")
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "train"),
        help="class split to draw episodes from (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the fixed episodes (default: %(default)s)"
    )
    parser.add_argument(
        "--batch", type=int, default=50, help="episodes evaluated at once (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    _common(parser)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        help="folder holding omniglot/images_*.zip (default: $FEWSIGHT_DATA, else ~/.cache/fewsight/data)",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewsight", description="Few-shot recognition by meta-learning.")
    commands = parser.add_subparsers(dest="command", required=True)
    _train_parser(commands)
    _eval_parser(commands)
    return parser


def _device(name: str | None):
    import torch

    from fewsight.train import default_device

    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise FewsightError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from error
    if device.type not in ("cpu", "cuda"):
        raise FewsightError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FewsightError("no CUDA device is available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise FewsightError(f"there is no {name} here: {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed episode shapes: pick the fastest kernels once
    return device


def _run_train(args: argparse.Namespace) -> None:
    import torch

    from fewsight.train import train

    values = {f.name: getattr(args, f.name) for f in fields(RunConfig) if hasattr(args, f.name)}
    config = RunConfig(**{**values, "transductive": not args.non_transductive})
    config.validate()
    device = _device(args.device)
    try:
        out = train(config, args.out, args.data_root, device, args.resume, not args.quiet)
    except torch.cuda.OutOfMemoryError as error:
        raise FewsightError(
            f"out of memory on {device}; lower --meta-batch, --ways, --queries or --inner-steps"
        ) from error
    print(f"trained: {out}")


def _run_eval(args: argparse.Namespace) -> None:
    from fewsight.data import EpisodeSampler
    from fewsight.evaluate import evaluate
    from fewsight.runs import check_seed, load_learner, load_split

    if args.episodes < 1 or args.batch < 1:
        raise FewsightError("--episodes and --batch must be at least 1")
    check_seed(args.seed)
    if not args.run.is_dir():
        raise FewsightError(f"no run folder at {args.run}; pass the --out of a training run")
    device = _device(args.device)
    config, learner = load_learner(args.run, device)
    sampler = EpisodeSampler(
        load_split(config, args.split, args.data_root), config.ways, config.shots, config.queries, device
    )
    accuracy = evaluate(learner, sampler, args.episodes, args.batch, args.seed, not args.quiet)
    if args.json:
        print(
            json.dumps(
                {
                    **asdict(accuracy),
                    "split": args.split,
                    "seed": args.seed,
                    "ways": config.ways,
                    "shots": config.shots,
                    "algorithm": config.algorithm,
                }
            )
        )
    else:
        print(f"{config.algorithm} {config.ways}-way {config.shots}-shot, {args.split}: {accuracy}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv`; returns the exit status (2 for a problem it explains on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        {"train": _run_train, "eval": _run_eval}[args.command](args)
    except (FewsightError, OSError) as error:  # OSError: a full disk, a folder that cannot be written
        print(f"fewsight: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewsight: interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130
    return 0
