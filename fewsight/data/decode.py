"""Decode image files into one uint8 tensor, naming any file that cannot be read, and keep decoded
tensors in a verified cache file."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fewsight.data.roots import cache_dir, unwritable, write_atomically
from fewsight.errors import FewsightError

# What PIL raises for a file that is not an image, a truncated or damaged one, or a crafted one.
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
SUGGESTED_SIDE = 2048  # the longer side suggested for an image over the pixel limit
CACHE_FORMAT = 2  # caches written before it (unverified) have other names and are not read


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:,.1f}".removesuffix(".0") + " MP"


def _probe(stream: BinaryIO) -> Image.Image | None:
    """The image opened from its header as `Image.open` does, but without PIL's decompression-bomb
    check (so that a refusal can say its size); None if no format reads it."""
    Image.init()
    stream.seek(0)
    prefix = stream.read(16)
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):
            continue
        try:
            stream.seek(0)
            return factory(stream, "")
        except Exception:  # not this format (PIL's plugins raise many kinds): try the next
            continue
    return None


def unreadable(name: str, error: BaseException, fix: str) -> FewsightError:
    """The error for an image that cannot be decoded."""
    return FewsightError(f"{name} is not a readable image ({error}); {fix}")


def _check_header(stream: BinaryIO, name: str, fix: str, side: int) -> Image.Image | None:
    """The image opened from its header (see `_probe`), refusing an empty file or one with more
    pixels than PIL's limit."""
    stream.seek(0)
    if not stream.read(1):
        raise FewsightError(f"{name} is empty (0 bytes), not an image; {fix}")
    image, limit = _probe(stream), Image.MAX_IMAGE_PIXELS
    if image is not None and limit is not None and image.width * image.height > limit:
        width, height = image.size
        scale = side / max(width, height)
        smaller = f"{max(1, round(width * scale))}x{max(1, round(height * scale))}"
        raise FewsightError(
            f"{name} is {width}x{height} pixels ({_megapixels(width * height)}), over the "
            f"{_megapixels(limit)} limit for decoding: resize it, for example to {smaller} pixels"
        )
    return image


def open_image(
    source: Path | BinaryIO, name: str, fix: str = "remove or replace it", side: int = SUGGESTED_SIDE
) -> Image.Image:
    """An image opened lazily (header read), or a one-line FewsightError naming `name` and `fix` for
    a file that is missing, empty, not an image, or over PIL's pixel limit (`Image.MAX_IMAGE_PIXELS`,
    89 MP unless changed), the latter saying how to resize it (to `side` pixels on its longer side)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as handle:
                _check_header(handle, name, fix, side)
        except FileNotFoundError as error:
            raise FewsightError(f"{name} does not exist; {fix}") from error
        except OSError as error:
            raise FewsightError(f"{name} cannot be read ({error.strerror or error}); {fix}") from error
    else:
        image = _check_header(source, name, fix, side)
        if image is not None:
            return image  # opened as Image.open would, on the caller's stream
    try:
        return Image.open(source)  # which seeks to the start of a stream
    except DECODE_ERRORS as error:
        raise unreadable(name, error, fix) from error


def decode_image(
    path: Path | BinaryIO, image_size: int, channels: int, name: str | None = None
) -> np.ndarray:
    """One image as uint8 (channels, size, size): converted to grey or RGB and resized (bilinear).

    `path` may also be an open binary file (an upload); `name` then names it in error messages.
    Any file that cannot be decoded gives a one-line FewsightError naming it (see `open_image`).
    """
    name = name or str(path)
    fix = "remove or replace it"
    try:
        with open_image(path, name, fix) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.array(image, dtype=np.uint8)
    except DECODE_ERRORS as error:
        raise unreadable(name, error, fix) from error
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


def checksum(value: dict) -> int:
    """CRC-32 of a cache's contents: every entry's name, and its tensor's dtype, shape and bytes or
    its plain value as JSON."""
    crc = 0
    for key in sorted(value):
        item = value[key]
        if isinstance(item, torch.Tensor):
            crc = zlib.crc32(f"{key} {item.dtype} {tuple(item.shape)}".encode(), crc)
            crc = zlib.crc32(item.contiguous().numpy(), crc)
        else:
            crc = zlib.crc32(f"{key} {json.dumps(item)}".encode(), crc)
    return crc


def _read_cache(path: Path) -> dict | None:
    """A cache's contents, or None if there is none; a damaged one is reported (a warning) and None."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != CACHE_FORMAT:
            problem = "not a fewsight cache"
        elif saved.get("checksum") != checksum(saved["value"]):
            problem = "its checksum does not match its contents"
        else:
            return saved["value"]
    except Exception as error:  # a damaged file, however torch reports it
        problem = (str(error).split(". ")[0].splitlines() or [type(error).__name__])[0][:200]
    warnings.warn(
        f"the decoded cache {path} is damaged ({problem}); decoding the images again to replace it",
        stacklevel=2,
    )
    return None


def _write_cache(path: Path, value: dict) -> None:
    """Save `value` atomically with its checksum; a cache that cannot be written (a read-only
    folder, a full disk) is reported (a warning) and the caller carries on with `value` in memory."""
    saved = {"format": CACHE_FORMAT, "checksum": checksum(value), "value": value}
    try:
        write_atomically(path, lambda handle: torch.save(saved, handle))
    except OSError as error:
        warnings.warn(
            f"{unwritable('the decoded cache', path, error)}; this run carries on with the images "
            "decoded in memory, and the next one decodes them again",
            stacklevel=2,
        )


def cached(name: str, key: str, build: Callable[[], dict]) -> dict:
    """`build()` saved once under the cache folder as <name>-<hash of key>.pt, then read back.

    The file is written atomically with a checksum and verified when read: a damaged one is built
    again (with a warning naming it), and one that cannot be written leaves `build()` in memory.
    """
    digest = hashlib.sha256(f"{CACHE_FORMAT}\n{key}".encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{digest}.pt"
    value = _read_cache(path)
    if value is None:
        value = build()
        _write_cache(path, value)
    return value
