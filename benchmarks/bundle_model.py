"""Make a model to ship in fewsight/use/bundled/NAME from a run folder: its config.json and
metrics.jsonl, and a checkpoint.pt holding only the learner's weights, with --int8 stored in 8 bits
(fewsight/run/compact.py: a quarter of float32's size). Then estimate its fixed batch-norm statistics
for the weights as shipped and score it, with the commands this prints; write its MODEL_CARD.md by hand.

Usage: python benchmarks/bundle_model.py RUN OUT [--weights best] [--int8]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from fewsight.run.compact import quantise
from fewsight.run.files import CONFIG, serialise, write_atomic
from fewsight.run.folder import load_checkpoint

LIMIT_MB = 12  # the most a bundled model's file may weigh


def bundle(run: Path, out: Path, weights: str, int8: bool) -> Path:
    """Write OUT/config.json, OUT/metrics.jsonl and OUT/checkpoint.pt; returns the checkpoint's path."""
    checkpoint = load_checkpoint(run, "cpu", weights)
    learner = {name: value.cpu() for name, value in checkpoint["learner"].items()}
    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, "metrics.jsonl"):
        shutil.copy(run / name, out / name)
    path = out / "checkpoint.pt"
    stored = quantise(learner) if int8 else learner
    write_atomic(serialise({"learner": stored, "step": checkpoint["step"]}), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run folder to ship")
    parser.add_argument("out", type=Path, help="the bundled model's folder, e.g. fewsight/use/bundled/NAME")
    parser.add_argument("--weights", choices=("last", "best"), default="last", help="weights to ship")
    parser.add_argument("--int8", action="store_true", help="store the large weight tensors in 8 bits")
    args = parser.parse_args()
    path = bundle(args.run, args.out, args.weights, args.int8)
    size = path.stat().st_size / 2**20
    over = f", over the {LIMIT_MB} MB a bundled model may weigh" if size > LIMIT_MB else ""
    print(f"{path}: {size:.1f} MB{over}")
    print(f"fixed statistics: fewsight eval {args.out} --norm population --keep-statistics --episodes 1000")
    print(f"5-shot: fewsight eval {args.out} --ways 5 --shots 5 --episodes 1000")


if __name__ == "__main__":
    main()
