"""fewsight predict: classify images with a model adapted to a support folder (fewsight.use.predict)."""

from __future__ import annotations

import argparse
from pathlib import Path
from shlex import quote

from fewsight.cli.common import device_flag, pick_device
from fewsight.errors import FewsightError


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images with a model adapted to a support folder",
        description="Adapt MODEL to the classes in --support (one subfolder of a few images per class) "
        "and print each query's predicted class and probability. MODEL is a run folder, a bundled model "
        "(e.g. omniglot) or a file written by fewsight export (then --support is not needed).",
    )
    parser.add_argument("model", help="run folder, bundled model name, or exported classifier file")
    parser.add_argument("--support", type=Path, help="folder with one subfolder of images per class")
    parser.add_argument("--query", type=Path, nargs="+", required=True, help="query image files or folders")
    parser.add_argument("--csv", type=Path, help="write the predictions to this CSV file instead")
    device_flag(parser)


def run(args: argparse.Namespace) -> None:
    from fewsight.use.predict import adapted_classifier, predict, query_paths, write_csv

    if args.csv and args.csv.parent.exists() and not args.csv.parent.is_dir():  # checked before any work
        raise FewsightError(f"--csv {args.csv}: {args.csv.parent} is a file, not a folder; choose another")
    if args.csv and not args.csv.parent.is_dir():
        raise FewsightError(
            f"--csv {args.csv}: the folder {args.csv.parent} does not exist; create it "
            f"(mkdir -p {quote(str(args.csv.parent))}) or choose another path"
        )
    if args.csv and args.csv.is_dir():
        raise FewsightError(
            f"--csv {args.csv} is a folder; name a file in it, e.g. {args.csv / 'predictions.csv'}"
        )
    config, classifier, names = adapted_classifier(args.model, args.support, pick_device(args.device))
    predictions = predict(classifier, query_paths(args.query), config, names)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            write_csv(predictions, names, handle)
        print(f"wrote {len(predictions)} predictions to {args.csv}")
    else:
        for p in predictions:
            print(f"{p.path}\t{p.predicted}\t{p.probability:.3f}")
