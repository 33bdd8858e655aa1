"""fewsight eval: a run's accuracy on fixed test episodes (fewsight.use.evaluation)."""

from __future__ import annotations

import argparse
import json

from fewsight.cli.common import data_flags, out_of_memory, pick_device
from fewsight.run.config import METRICS
from fewsight.use.evaluation import POPULATION_IMAGES

_OPTIONS = (  # flags passed to evaluate_run as they are
    "ways",
    "shots",
    "queries",
    "episodes",
    "batch",
    "split",
    "seed",
    "metric",
    "norm",
    "keep_statistics",
    "weights",
    "data_root",
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="accuracy of a trained run on fixed test episodes",
        description="Accuracy ± 95% confidence interval on fixed episodes.",
    )
    parser.add_argument("run", help="run folder written by fewsight train, or a bundled model name")
    for name in ("ways", "shots", "queries"):
        parser.add_argument(f"--{name}", type=int, help=f"{name} per test task (default: the run's)")
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
        "--batch",
        type=int,
        default=10,
        help="episodes evaluated at once (default: %(default)s; lower it if memory runs out, raise it for "
        "speed on a large GPU; the seed's episodes are the same at any batch)",
    )
    parser.add_argument(
        "--metric",
        choices=METRICS,
        help="protonet and pretrain runs: score with this metric instead of the run's (e.g. one pre-trained "
        "backbone both ways)",
    )
    parser.add_argument(
        "--norm",
        choices=("task", "population"),
        help="batch-norm statistics: task (each task's, or its support set's when non-transductive) or "
        f"population: fixed mean and variance of up to {POPULATION_IMAGES:,} training images, each query "
        "normalised on its own (as RFS and Meta-Baseline score pre-trained backbones; model-based and "
        "pretrain runs), the run's population.pt where it has one (default: population where the model "
        "ships population.pt, as the bundled miniimagenet model does, else task)",
    )
    parser.add_argument(
        "--keep-statistics",
        action="store_true",
        help="with --norm population: write the statistics into RUN/population.pt, so that eval, predict, "
        "export and serve use them from then on (delete the file to go back)",
    )
    parser.add_argument(
        "--weights",
        choices=("last", "best", "ensemble"),
        default="last",
        help="the run's last checkpoint, the weights that scored best in validation while it trained "
        "(best.pt), or an ensemble of the weights of its best scores, their logits averaged as MAML++'s "
        "code averages them (best-STEP.pt, kept by fewsight train --keep-best K) (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    data_flags(parser)


def run(args: argparse.Namespace) -> None:
    import torch

    from fewsight.training.distributed import is_main, setup
    from fewsight.use.evaluation import evaluate_run

    device = setup(pick_device(args.device))
    try:
        result = evaluate_run(
            args.run, device, progress=not args.quiet, **{n: getattr(args, n) for n in _OPTIONS}
        )
    except torch.cuda.OutOfMemoryError as error:
        raise out_of_memory(device, f"lower --batch ({args.batch} episodes at once)") from error
    if is_main():
        print(json.dumps(result.record()) if args.json else result)
