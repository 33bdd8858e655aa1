"""fewsight export: a model adapted to a support folder as one small file (fewsight.use.export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fewsight.cli.common import device_flag, pick_device
from fewsight.errors import FewsightError


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="save a model adapted to a support folder as one small classifier file",
        description="Adapt MODEL to --support and save the classifier; fewsight predict FILE reads it. "
        "--format onnx writes an ONNX model instead (also from a file written by fewsight export): "
        "float32 images (B, C, H, W) in [0, 1] in the model's form -> logits (B, N).",
    )
    parser.add_argument("model", help="run folder or bundled model name (or an exported file, for onnx)")
    parser.add_argument("--support", type=Path, help="folder with one subfolder per class")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument(
        "--format",
        choices=("pt", "onnx"),
        help="pt: fewsight's own file; onnx: an ONNX model for ONNX Runtime and other runtimes, "
        "needs pip install 'fewsight[onnx]' (default: onnx for an --out ending in .onnx, else pt)",
    )
    device_flag(parser)


def run(args: argparse.Namespace) -> None:
    from fewsight.use.export import export_classifier
    from fewsight.use.predict import adapted_classifier

    args.format = _format(args.format, args.out)
    if args.out.is_dir():
        example = args.out / f"classifier.{args.format}"
        raise FewsightError(f"--out {args.out} is a folder; name a file in it, e.g. {example}")
    if Path(args.model).is_file() and args.format == "pt":
        raise FewsightError(f"{args.model} is already an exported classifier; --format onnx converts it")
    config, classifier, names = adapted_classifier(args.model, args.support, pick_device(args.device))
    export_classifier(config, classifier, names, args.out, args.format)
    print(f"exported a {len(names)}-class classifier to {args.out} ({args.out.stat().st_size // 1024} KiB)")


def _format(asked: str | None, out: Path) -> str:
    """The --format asked for, else the one --out's suffix names; a suffix naming the other refused."""
    named = {".onnx": "onnx", ".pt": "pt"}.get(out.suffix.lower())
    if asked is not None and named not in (None, asked):
        raise FewsightError(f"--out {out} names a .{named} file but --format is {asked}; make them agree")
    return asked or named or "pt"
