"""The files of a run folder, written so that they survive a crash and read without running code.

A run folder holds `config.json`, `metrics.jsonl`, `checkpoint.pt` (the newest) and
`checkpoint-STEP.pt` for the last `KEEP` saves, and `best.pt`, the weights of the best validation
score so far (runs that validate).
Every file is written to a temporary name, flushed to disk and renamed over its target, so a
process killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
from pathlib import Path

import torch

from fewsight.errors import FewsightError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
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


def write_json(value: object, path: Path) -> None:
    """Write `value` as indented JSON (a config.json), atomically."""
    write_atomic((json.dumps(value, indent=2) + "\n").encode(), path)


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the metrics rows after `step` (logged after the checkpoint a run resumes from) and any
    line a killed process left half written."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_atomic("".join(kept).encode(), path)


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


def save_best(learner: dict, step: int, score: float, folder: Path) -> None:
    """Write best.pt: the weights that scored best in validation, with their step and score."""
    write_atomic(serialise({"learner": learner, "step": step, "val_accuracy": score}), folder / BEST)


def best_score_until(folder: Path, step: int) -> float:
    """The validation score of the run's best.pt if it was saved by step `step` (where a resumed run
    starts; a later one is overwritten as the run gets there again), else -inf."""
    path = folder / BEST
    if not path.is_file():
        return -math.inf
    best = read_checkpoint(path)
    return float(best["val_accuracy"]) if best["step"] <= step else -math.inf
