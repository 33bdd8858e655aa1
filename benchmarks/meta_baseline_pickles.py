"""miniImageNet as the pickle files that Meta-Baseline's code reads (Gidaris et al.'s layout, which
MetaOptNet's and FEAT's code read too), made from the images fewsight reads, so that the reference code
runs unchanged on the same pixels (benchmarks/metabaseline_reference.sh; docs/RESULTS.md).

Writes OUT/miniImageNet_category_split_{train_phase_train,train_phase_val,val,test}.pickle, each a dict
of 'data' (N, 84, 84, 3) uint8 RGB, as fewsight decodes the JPEGs, 'labels' (N ints: training classes
0-63, validation 64-79, test 80-99, each split's classes in fewsight's order) and 'catname2label'.
Gidaris et al.'s train_phase_val holds other ImageNet images of the 64 training classes, which this
data set does not have: here it is the first --monitor images of each training class, which are also
trained on. The reference code only watches that split's accuracy while it trains; nothing it scores
or saves as Classifier-Baseline depends on it.

Usage: python benchmarks/meta_baseline_pickles.py DATA_ROOT OUT_DIR [--monitor 20]
(DATA_ROOT: the folder holding miniimagenet/, or that folder itself)
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make fewsight importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewsight.data.images import LabelledImages
from fewsight.data.miniimagenet import load_miniimagenet

FILE = "miniImageNet_category_split_{}.pickle"
FIRST_LABEL = {"train": 0, "val": 64, "test": 80}  # Gidaris et al.'s numbering across the splits


def pack(images: LabelledImages, first_label: int) -> dict:
    """One split as Gidaris et al.'s dict: channels-last uint8 images and labels from `first_label`."""
    labels = (images.labels + first_label).tolist()
    names = {name: first_label + index for index, name in enumerate(images.class_names)}
    return {
        "data": images.images.permute(0, 2, 3, 1).contiguous().numpy(),
        "labels": labels,
        "catname2label": names,
    }


def first_of_each_class(images: LabelledImages, count: int) -> LabelledImages:
    """The first `count` images of every class, in the split's order."""
    keep = torch.zeros(len(images.labels), dtype=torch.bool)
    for label in images.labels.unique():
        keep[torch.nonzero(images.labels == label).flatten()[:count]] = True
    return LabelledImages(images.images[keep], images.labels[keep], images.class_names)


def write_pickles(
    data_root: str | Path, out: str | Path, monitor: int = 20, progress: bool = True
) -> list[Path]:
    """The four pickle files in `out` (created if missing); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, tag in (("train", "train_phase_train"), ("val", "val"), ("test", "test")):
        images = load_miniimagenet(split, 84, data_root, progress)
        splits = [(tag, images)]
        if split == "train":
            splits.append(("train_phase_val", first_of_each_class(images, monitor)))
        for name, part in splits:
            path = out / FILE.format(name)
            with path.open("wb") as file:
                pickle.dump(pack(part, FIRST_LABEL[split]), file, protocol=4)
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_root", help="the folder holding miniimagenet/ (or that folder itself)")
    parser.add_argument("out", help="where to write the pickle files")
    parser.add_argument("--monitor", type=int, default=20, help="images a class in train_phase_val (20)")
    args = parser.parse_args()
    for path in write_pickles(args.data_root, args.out, args.monitor):
        print(f"{path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
