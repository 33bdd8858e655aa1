"""fewsight train: meta-train a model into a run folder (fewsight.training.metatrain)."""

from __future__ import annotations

import argparse
from pathlib import Path
from shlex import quote

from fewsight.cli.common import (
    AUGMENT_HELP,
    DEFAULTS,
    HELP,
    config_flags,
    data_flags,
    out_of_memory,
    pick_device,
    run_options,
    settings,
)
from fewsight.errors import FewsightError
from fewsight.run.algorithms import REGISTRY
from fewsight.run.config import RunConfig
from fewsight.training.timing import parse_duration

_RESOLVED_LATER = ("image_size", "inner_steps", "eval_inner_steps")  # their defaults depend on other flags


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="meta-train a model into a run folder",
        description="Meta-train a model; writes config.json, metrics.jsonl and checkpoint.pt into --out.",
    )
    config_flags(parser, DEFAULTS, HELP, _RESOLVED_LATER)
    parser.add_argument(
        "--non-transductive",
        action="store_true",
        help="normalise queries with the support set's batch statistics, not their own",
    )
    parser.add_argument(
        "--joint-statistics",
        action="store_true",
        help="protonet: normalise each episode's support and query images together, as one batch "
        "(Snell et al.'s code), not each set with its own statistics",
    )
    parser.add_argument(
        "--step-statistics",
        action="store_true",
        help="protonet: in meta-training, normalise all support and query images of the step's tasks "
        "together, as one batch (Meta-Baseline's code); evaluation still normalises each task alone",
    )
    parser.add_argument(
        "--trainval",
        action="store_true",
        help="train on train+val classes (the papers' protocol) and skip validation",
    )
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bf16 autocast (GPUs that support it; default: off, and --no-bf16 undoes an earlier --bf16)",
    )
    parser.add_argument("--augment", action="store_true", help=AUGMENT_HELP)
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record the meta-training step once as a CUDA graph and replay it, 2-3x faster; applies on "
        "a GPU, also under torchrun, where each process records its own step and the meta-gradients "
        "are averaged between replays (default: on; --no-cuda-graphs runs the step eagerly)",
    )
    parser.add_argument(
        "--learned-inner-lr",
        action="store_true",
        help="MAML++: learn one inner step size per parameter tensor and per inner step",
    )
    parser.add_argument(
        "--adapt-norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="maml, fomaml, mamlpp: the inner loop adapts the batch-norm scales and shifts too (default: on; "
        "--no-adapt-norm leaves them out, meta-learned only, as the MAML paper's code)",
    )
    parser.add_argument(
        "--per-step-bn",
        action="store_true",
        help="MAML++: a batch-norm scale and shift for every inner step, meta-learned, not adapted",
    )
    parser.add_argument(
        "--cosine-lr",
        action="store_true",
        help="anneal the meta learning rate along a cosine from --meta-lr to --cosine-floor of it over "
        "--steps (--algorithm mamlpp turns it on)",
    )
    parser.add_argument(
        "--cosine-floor",
        type=float,
        default=DEFAULTS.cosine_floor,
        help="the cosine schedule's last rate as a fraction of --meta-lr (default: %(default)s, MAML++'s "
        "1e-5 from 1e-3; its code's miniImageNet configurations set 1, a constant rate)",
    )
    parser.add_argument(
        "--linear-lr",
        action="store_true",
        help="lower the meta learning rate from --meta-lr to 0 in a straight line over --steps (Reptile's "
        "code: --meta-optimizer sgd --meta-momentum 0 --meta-lr 1)",
    )
    parser.add_argument(
        "--lr-halve-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="halve the meta learning rate every this many steps (ProtoNet as Snell et al.: 2000; 0: off)",
    )
    parser.add_argument(
        "--checkpoint-inner",
        action="store_true",
        help="memory: recompute each inner step in the backward pass instead of keeping its activations "
        "(same result, more time)",
    )
    parser.add_argument(
        "--task-loop",
        action="store_true",
        help="memory: adapt the tasks one after another with plain autograd instead of all at once "
        "(same result, slower); with --task-chunk 1 only one task's graph is alive, as in learn2learn",
    )
    parser.add_argument(
        "--tensorboard", action="store_true", help="also write TensorBoard event files to RUN/tensorboard"
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder to create (or continue)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument(
        "--time",
        type=_duration,
        metavar="DURATION",
        help="time budget of this command, e.g. 90s, 12m, 2h: train until it is spent (or --steps are done), "
        "then validate and save a checkpoint, so the run ends with a usable model; --steps still sets the "
        "schedules' length (--cosine-lr, --lr-halve-every, --linear-lr, MAML++'s annealing), so a run "
        "stopped early ends partway along them and --resume continues them from there",
    )
    data_flags(parser)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except FewsightError as error:  # argparse prints it as the flag's error, in one line
        raise argparse.ArgumentTypeError(str(error)) from error


def run(args: argparse.Namespace) -> None:
    import torch

    from fewsight.training.metatrain import train

    values = settings(args, RunConfig)
    for name in ("inner_steps", "eval_inner_steps"):
        if values[name] is None:
            values[name] = REGISTRY[args.algorithm].inner_steps or getattr(DEFAULTS, name)
    if args.init:
        values["init"] = str(Path(args.init).resolve())
    config = RunConfig(**{**values, "transductive": not args.non_transductive, "adapt_norm": args.adapt_norm})
    config.validate()
    device = pick_device(args.device)
    try:
        out = train(
            config,
            args.out,
            device=device,
            tensorboard=args.tensorboard,
            time_budget=args.time,
            **run_options(args),
        )
    except torch.cuda.OutOfMemoryError as error:
        raise out_of_memory(device, "lower --meta-batch, --ways, --queries or --inner-steps") from error
    from fewsight.training.distributed import is_main

    if is_main():
        print(f"trained: {out}")
        if args.time is not None:
            print(stopped_early(out), end="")


def stopped_early(out: Path) -> str:
    """A line for a run that --time stopped before its last step: where, and how to score or continue it."""
    from fewsight.run.folder import checkpoint_step

    step, steps = checkpoint_step(out), RunConfig.load(out).steps
    if step is None or step >= steps:
        return ""
    return (
        f"--time stopped it at step {step:,} of {steps:,}: fewsight eval {quote(str(out))} scores it, "
        f"fewsight train --resume --out {quote(str(out))} continues it\n"
    )
