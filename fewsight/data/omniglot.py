"""Omniglot from its two canonical archives, decoded once into a cached uint8 tensor.

Images are stored with ink bright (255) on a dark background (0), resized to a square size
(28x28 by default) with PIL's antialiasing bilinear filter. Two protocols name the class splits:

* ``maml``: the protocol of the MAML and Prototypical Networks papers. The 1,623 characters of both
  archives are merged and ordered by the SHA-256 hex digest of ``"<Alphabet>/<characterNN>"``; the
  first 1,200 are for training (the first 1,100 ``train``, the next 100 ``val``) and the remaining
  423 are ``test``. Every character also gives three more classes, its 90, 180 and 270 degree
  rotations, in every split. ``trainval`` is all 1,200 training characters, as in the papers.
* ``lake``: Lake et al.'s split: the 964 characters of the background archive for training (the
  last 100 of them in the same hash order held out as ``val``), the 659 of the evaluation archive
  for ``test``; no rotations.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fewsight.data.decode import DECODE_ERRORS, cached, open_image, unreadable
from fewsight.data.images import LabelledImages
from fewsight.data.roots import file_digest, find_or_download
from fewsight.errors import FewsightError

_CANONICAL = "https://github.com/brendenlake/omniglot/raw/master/python/"
ARCHIVES = {
    "images_background.zip": (_CANONICAL + "images_background.zip", "68d2efa1b9178cc56df9314c21c6e718"),
    "images_evaluation.zip": (_CANONICAL + "images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811"),
}
EXPECTED_CHARACTERS = {"images_background.zip": 964, "images_evaluation.zip": 659}
DRAWERS = 20
DRAWING_SIZE = 105  # pixels a side of the original drawings
MAX_DRAWING_BYTES = 1 << 20  # the largest canonical PNG is under 1 KB: more is a zip bomb or not Omniglot
PROTOCOLS = ("maml", "lake")
SPLITS = ("train", "val", "test", "trainval")
_MEMBER = re.compile(r"^images_(?:background|evaluation)/([^/]+)/(character\d+)/([^/]+\.png)$")


@dataclass
class OmniglotCharacters:
    """All characters: images (characters, 20, size, size) uint8, names "Alphabet/characterNN"."""

    images: torch.Tensor
    names: list[str]
    background: torch.Tensor


def _escapes(member: str) -> bool:
    """Whether a member name could point outside the folder it sits in (zip-slip): absolute, `..`."""
    parts = member.replace("\\", "/").split("/")
    return parts[0] == "" or ":" in parts[0] or ".." in parts


def _read_drawings(path: Path) -> dict[str, dict[str, bytes]]:
    """The PNG bytes of an archive's drawings by character and file name, read in memory.

    Nothing is ever extracted to disk; all the same, an archive with a member whose name escapes its
    folder, or one too large to be a drawing, is refused as not canonical.
    """
    drawings: dict[str, dict[str, bytes]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if _escapes(info.filename):
                    raise FewsightError(
                        f"{path}: member {info.filename!r} points outside the archive; replace it"
                    )
                match = _MEMBER.match(info.filename)
                if not match:
                    continue
                if info.file_size > MAX_DRAWING_BYTES:
                    raise FewsightError(
                        f"{path}: member {info.filename} is too large for a drawing; replace it"
                    )
                alphabet, character, file = match.groups()
                try:
                    data = archive.read(info)
                except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
                    raise FewsightError(
                        f"{path}: member {info.filename} is damaged ({error}); replace it"
                    ) from error
                drawings.setdefault(f"{alphabet}/{character}", {})[file] = data
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise FewsightError(f"{path} is not a readable zip archive ({error}); replace it") from error
    return drawings


def _open_drawing(path: Path, name: str, data: bytes) -> Image.Image:
    """One decoded drawing; its size is checked from the header first, so no image bomb is decoded."""
    fix = "replace the archive with the canonical one"
    image = open_image(io.BytesIO(data), f"{path}: {name}", fix, side=DRAWING_SIZE)
    if image.size != (DRAWING_SIZE, DRAWING_SIZE):
        width, height = image.size
        raise FewsightError(
            f"{path}: {name} is {width}x{height} pixels, not a {DRAWING_SIZE}x{DRAWING_SIZE} drawing"
        )
    try:
        image.load()
    except DECODE_ERRORS as error:
        raise unreadable(f"{path}: {name}", error, fix) from error
    return image


def _decode_archive(path: Path, image_size: int, progress: bool = True) -> tuple[list[str], np.ndarray]:
    """Character names and their images (characters, 20, size, size) from one archive."""
    drawings = _read_drawings(path)
    expected = EXPECTED_CHARACTERS[path.name]
    if len(drawings) != expected or any(len(d) != DRAWERS for d in drawings.values()):
        raise FewsightError(
            f"{path} holds {len(drawings)} characters, expected {expected} with {DRAWERS} images "
            "each; replace it with the canonical archive"
        )
    names = sorted(drawings)
    images = np.empty((len(names), DRAWERS, image_size, image_size), dtype=np.uint8)
    bar = tqdm(names, desc=f"decoding {path.name}", unit="char", leave=False, disable=not progress)
    for c, name in enumerate(bar):
        for d, file in enumerate(sorted(drawings[name])):
            image = _open_drawing(path, f"{name}/{file}", drawings[name][file])
            resized = image.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
            images[c, d] = 255 - np.asarray(resized, dtype=np.uint8)
    return names, images


def load_characters(
    root: str | os.PathLike | None = None, image_size: int = 28, progress: bool = True
) -> OmniglotCharacters:
    """Every Omniglot character, decoded from the archives once (with a progress bar unless
    `progress` is False) and then read from the cache."""
    archives = find_or_download(root, "omniglot", ARCHIVES)

    def build() -> dict:
        names, arrays = [], []
        for archive in archives:
            archive_names, images = _decode_archive(archive, image_size, progress)
            names += archive_names
            arrays.append(images)
        background = torch.zeros(len(names), dtype=torch.bool)
        background[: len(arrays[0])] = True
        return {"images": torch.from_numpy(np.concatenate(arrays)), "names": names, "background": background}

    key = "".join(file_digest(a) for a in archives)
    saved = cached(f"omniglot-{image_size}px", key, build)
    return OmniglotCharacters(saved["images"], saved["names"], saved["background"])


def _hash_order(names: list[str], indices: list[int]) -> list[int]:
    return sorted(indices, key=lambda i: hashlib.sha256(names[i].encode()).hexdigest())


def split_characters(names: list[str], background: torch.Tensor, protocol: str) -> dict[str, list[int]]:
    """Indices of the characters in each split of a protocol (see the module docstring)."""
    if protocol == "maml":
        ordered = _hash_order(names, list(range(len(names))))
        splits = {"train": ordered[:1100], "val": ordered[1100:1200], "test": ordered[1200:]}
    elif protocol == "lake":
        ordered = _hash_order(names, [i for i in range(len(names)) if background[i]])
        test = [i for i in range(len(names)) if not background[i]]
        splits = {"train": ordered[:-100], "val": ordered[-100:], "test": test}
    else:
        raise FewsightError(f"unknown Omniglot protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    splits["trainval"] = splits["train"] + splits["val"]
    return splits


def load_omniglot(
    split: str,
    protocol: str = "maml",
    image_size: int = 28,
    root: str | os.PathLike | None = None,
    progress: bool = True,
) -> LabelledImages:
    """One split of Omniglot as labelled images (rotations included in the maml protocol)."""
    if split not in SPLITS:
        raise FewsightError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    characters = load_characters(root, image_size, progress)
    chosen = split_characters(characters.names, characters.background, protocol)[split]
    rotations = (0, 1, 2, 3) if protocol == "maml" else (0,)
    images = characters.images[chosen]
    per_rotation = [torch.rot90(images, k, dims=(-2, -1)) for k in rotations]
    stacked = torch.stack(per_rotation, dim=1).flatten(0, 1)  # (classes, 20, size, size)
    class_names = [f"{characters.names[c]}/rot{90 * k}" for c in chosen for k in rotations]
    labels = torch.arange(len(class_names)).repeat_interleave(DRAWERS)
    return LabelledImages(stacked.flatten(0, 1).unsqueeze(1).contiguous(), labels, class_names)
