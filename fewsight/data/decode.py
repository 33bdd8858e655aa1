"""Decode image files into one uint8 tensor, naming any file that cannot be read."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from fewsight.data.roots import cache_dir
from fewsight.errors import FewsightError


def decode_image(
    path: Path | BinaryIO, image_size: int, channels: int, name: str | None = None
) -> np.ndarray:
    """One image as uint8 (channels, size, size): converted to grey or RGB and resized (bilinear).

    `path` may also be an open binary file (an upload); `name` then names it in error messages.
    """
    name = name or str(path)
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.array(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise FewsightError(f"{name} is not a readable image ({error}); remove or replace it") from error
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_images(
    paths: list[Path], image_size: int, channels: int, description: str, progress: bool = True
) -> torch.Tensor:
    """All images as uint8 (M, channels, size, size), with a progress bar unless `progress` is False."""
    images = np.empty((len(paths), channels, image_size, image_size), dtype=np.uint8)
    bar = tqdm(paths, desc=description, unit="img", leave=False, disable=not progress)
    for index, path in enumerate(bar):
        images[index] = decode_image(path, image_size, channels)
    return torch.from_numpy(images)


def cached(name: str, key: str, build: Callable[[], dict]) -> dict:
    """`build()` saved once under the cache folder as <name>-<hash of key>.pt, then read back."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{digest}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    torch.save(value, partial)
    os.replace(partial, path)
    return value
