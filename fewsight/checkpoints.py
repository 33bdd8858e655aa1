"""Checkpoints that survive a crash: written atomically, the last few kept, loaded without running code.

A run folder holds `checkpoint.pt` (the newest) and `checkpoint-STEP.pt` for the last `KEEP` saves,
and `best.pt`, the weights of the best validation score so far (runs that validate).
Every file is written to a temporary name, flushed to disk and renamed over its target, so a
process killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import torch

from fewsight.errors import FewsightError

LATEST = "checkpoint.pt"
BEST = "best.pt"  # the weights that scored best in validation so far, with that step and score
KEEP = 3
_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pt$")


def write_atomic(data: bytes, path: Path) -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    partial = path.with_name(f".{path.name}.part")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    if os.name == "posix":  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def numbered(folder: Path) -> list[Path]:
    """The folder's checkpoint-STEP.pt files, oldest first."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return [path for _, path in sorted(found)]


def serialise(state: dict) -> bytes:
    """The bytes torch.save writes for `state`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(state: dict, folder: Path, step: int, keep: int = KEEP) -> None:
    """Save `state` as checkpoint-STEP.pt and as checkpoint.pt; delete all but the last `keep` numbered."""
    data = serialise(state)
    write_atomic(data, folder / f"checkpoint-{step}.pt")
    write_atomic(data, folder / LATEST)
    for old in numbered(folder)[:-keep]:
        old.unlink()


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint loaded with weights_only (tensors and plain containers, no code is run).

    Files that would need code to load, or are damaged, raise a one-line FewsightError.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise FewsightError(
            f"{path} is not a safe fewsight checkpoint: loading it would run code, so it was refused"
        ) from error
    except Exception as error:  # torch reports damaged files with many exception types
        raise FewsightError(
            f"{path} is damaged or not a fewsight checkpoint (torch.load: {type(error).__name__})"
        ) from error
    if not isinstance(state, dict) or "learner" not in state:
        raise FewsightError(f"{path} is not a fewsight checkpoint (no learner weights in it)")
    return state
