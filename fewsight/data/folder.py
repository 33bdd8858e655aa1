"""A user's own image data set: one folder per class, or a CSV of `file,label` rows (paths relative
to the CSV), with its classes split into train, validation and test by a seeded hash."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import torch

from fewsight.data.decode import cached, decode_images
from fewsight.data.images import LabelledImages
from fewsight.errors import FewsightError


def labelled_files(source: Path) -> list[tuple[Path, str]]:
    """(image file, class name) pairs from a folder of class subfolders or a CSV file."""
    if source.is_dir():
        pairs = [
            (file, folder.name)
            for folder in sorted(source.iterdir())
            if folder.is_dir() and not folder.name.startswith(".")
            for file in sorted(folder.iterdir())
            if file.is_file() and not file.name.startswith(".")
        ]
    elif source.suffix.lower() == ".csv" and source.is_file():
        with open(source, newline="") as handle:
            rows = list(csv.reader(handle))
        if rows and [c.strip().lower() for c in rows[0]] in (["file", "label"], ["filename", "label"]):
            rows = rows[1:]
        if any(len(row) != 2 for row in rows):
            raise FewsightError(f"{source}: every row must be file,label")
        pairs = [(source.parent / file, label) for file, label in rows]
    else:
        raise FewsightError(
            f"{source} is neither a folder of class subfolders nor a .csv file of file,label rows"
        )
    if not pairs:
        raise FewsightError(f"{source} holds no images")
    return pairs


def split_classes(
    names: list[str], seed: int, fractions: tuple[float, float] = (0.6, 0.2)
) -> dict[str, list[str]]:
    """Classes ordered by SHA-256 of "<seed>:<name>"; the first 60% train, the next 20% val, the rest test."""
    ordered = sorted(set(names), key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    train_end = round(fractions[0] * len(ordered))
    val_end = train_end + round(fractions[1] * len(ordered))
    return {"train": ordered[:train_end], "val": ordered[train_end:val_end], "test": ordered[val_end:]}


def load_image_files(
    source: Path, classes: list[str], image_size: int, channels: int = 3, progress: bool = True
) -> LabelledImages:
    """The images of the given classes, decoded once (cached) to uint8 (M, channels, size, size)."""
    wanted = set(classes)
    pairs = [(file, label) for file, label in labelled_files(source) if label in wanted]
    files = [file for file, _ in pairs]
    key = "\n".join(f"{f.resolve()} {f.stat().st_mtime_ns if f.exists() else 0}" for f in files)
    images = cached(
        f"folder-{image_size}px-{channels}ch",
        key,
        lambda: {"images": decode_images(files, image_size, channels, f"decoding {source.name}", progress)},
    )["images"]
    index = {name: i for i, name in enumerate(classes)}
    return LabelledImages(images, torch.tensor([index[label] for _, label in pairs]), list(classes))
