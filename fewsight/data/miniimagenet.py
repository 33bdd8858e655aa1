"""miniImageNet in the layout users have: `images/` beside `train.csv`, `val.csv` and `test.csv`
(Ravi & Larochelle's split: 64, 16 and 20 classes of 600 84x84 colour images), decoded once per
split into a cached uint8 tensor."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from fewsight.data.decode import cached, decode_images
from fewsight.data.images import LabelledImages
from fewsight.data.roots import DATA_ENV, data_root, describe_root
from fewsight.errors import FewsightError

SPLITS = ("train", "val", "test")


def find_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding images/ and the csv files: <data root>/miniimagenet, or the root itself."""
    base = data_root(root)
    for folder in (base / "miniimagenet", base):
        if (folder / "images").is_dir() and all((folder / f"{s}.csv").is_file() for s in SPLITS):
            return folder
    raise FewsightError(
        f"no miniImageNet in {(base / 'miniimagenet').absolute()} or in the data root itself "
        f"({describe_root(root)}): put images/ (84x84 JPEGs) beside train.csv, val.csv and test.csv "
        f"there, or pass --data-root / set {DATA_ENV} to the folder holding miniimagenet/"
    )


def load_miniimagenet(
    split: str, image_size: int = 84, root: str | os.PathLike | None = None, progress: bool = True
) -> LabelledImages:
    """One split of miniImageNet as labelled RGB images."""
    if split not in SPLITS:
        raise FewsightError(f"unknown miniImageNet split {split!r}; use one of {', '.join(SPLITS)}")
    folder = find_root(root)
    table = (folder / f"{split}.csv").read_text()
    rows = list(csv.DictReader(table.splitlines()))
    if not rows or set(rows[0]) != {"filename", "label"}:
        raise FewsightError(f"{folder / split}.csv must have the columns filename,label")
    paths = [folder / "images" / row["filename"] for row in rows]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FewsightError(
            f"{len(missing)} images listed in {split}.csv are missing from {folder / 'images'} "
            f"(first: {', '.join(missing[:3])}); copy the complete images/ folder there"
        )
    names = sorted({row["label"] for row in rows})
    index = {name: i for i, name in enumerate(names)}

    def build() -> dict:
        images = decode_images(paths, image_size, 3, f"decoding miniImageNet {split}", progress)
        return {"images": images}

    images = cached(f"miniimagenet-{split}-{image_size}px", f"{folder.resolve()}\n{table}", build)["images"]
    labels = [index[row["label"]] for row in rows]
    return LabelledImages(images, torch.tensor(labels), names)
