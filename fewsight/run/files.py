"""The files of a run folder, written so that they survive a crash and read without running code.

A run folder holds `config.json`, `metrics.jsonl`, `checkpoint.pt` (the newest) and
`checkpoint-STEP.pt` for the last `KEEP` saves, and `best.pt`, the weights of the best validation
score so far (runs that validate); with --keep-best K, `best-STEP.pt` for the K best scores.
Every file is written to a temporary name, flushed to disk and renamed over its target, so a
process killed at any moment leaves either the old file or the new one, never half of one. Every
checkpoint is checked before it is loaded: the CRC-32 of each member of its zip archive (torch.save
writes one), so that a damaged file is named as damaged and never used.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import pickle
import pickletools
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from fewsight.errors import FewsightError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LATEST = "checkpoint.pt"
BEST = "best.pt"  # the weights that scored best in validation so far, with that step and score
KEEP = 3
_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pt$")
_KEPT_BEST = re.compile(r"^best-(\d+)\.pt$")  # --keep-best: one of the best validation scores' weights
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
ROOM = "free some space on that disk, or train into another --out on a disk with room"  # run folders
_MAGIC = (  # what a file that is not a zip archive is, by its first bytes
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip file"),
)
_RUNS_CODE = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}  # pickle opcodes


class DamagedFile(FewsightError):
    """A file that fails its check (a member's CRC-32, a zip archive cut short): it is not used."""

    def __init__(self, path: Path, detail: str, fix: str = "") -> None:
        self.path, self.detail = path, detail
        super().__init__(f"{path} is damaged ({detail}), so it was not used" + (f"; {fix}" if fix else ""))

    def fixed_by(self, fix: str) -> DamagedFile:
        """The same error with what to do about it."""
        return DamagedFile(self.path, self.detail, fix)


def full_disk(path: Path, error: OSError, room: str) -> FewsightError | None:
    """One line for `error` writing `path` if the disk is full (or a quota reached): the file and
    what to do (`room`); None for another error."""
    if error.errno not in _FULL:
        return None
    return FewsightError(f"could not write {path}: the disk is full ({error.strerror or error}); {room}")


def make_folder(folder: Path, flag: str, given: Path | None = None) -> None:
    """`mkdir -p folder` for the path a user gave as `flag` (`given`, by default the folder itself),
    or one line naming that path, the folder and the fix."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        which = "that folder" if given is None else f"the folder {folder}"
        raise FewsightError(
            f"{flag} {folder if given is None else given}: cannot make {which} "
            f"({error.strerror or error}); choose a path where you can write"
        ) from error


def write_atomic(data: bytes, path: Path, room: str = "free some space on that disk") -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it over `path`.
    On any failure the temporary file is removed and `path` is left as it was; a full disk is said
    in one line naming `path` and what to do (`room`)."""
    partial = path.with_name(f".{path.name}.part")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError) and (full := full_disk(path, error, room)) is not None:
            raise full from error
        raise
    if os.name == "posix":  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class MetricsLog:
    """metrics.jsonl opened for appending rows; a full disk is said in one line naming it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "a")  # noqa: SIM115

    def write(self, text: str) -> None:
        self._checked(self.handle.write, text)

    def flush(self) -> None:
        self._checked(self.handle.flush)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a row that could not be written was reported; resume drops it
            self.handle.close()

    def _checked(self, action: Callable[..., object], *args: object) -> None:
        try:
            action(*args)
        except OSError as error:
            room = f"{ROOM}; the run's last checkpoint is kept, and --resume continues from it"
            raise (full_disk(self.path, error, room) or error) from error


def write_json(value: object, path: Path) -> None:
    """Write `value` as indented JSON (a config.json), atomically."""
    write_atomic((json.dumps(value, indent=2) + "\n").encode(), path, ROOM)


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
    write_atomic("".join(kept).encode(), path, ROOM)


def step_of(path: Path) -> int:
    """The step in a checkpoint-STEP.pt file's name."""
    return int(_NUMBERED.match(path.name).group(1))


def numbered(folder: Path) -> list[Path]:
    """The folder's checkpoint-STEP.pt files, oldest first."""
    found = [p for p in folder.iterdir() if _NUMBERED.match(p.name)]
    return sorted(found, key=step_of)


def serialise(state: dict) -> bytes:
    """The bytes torch.save writes for `state`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(state: dict, folder: Path, step: int, keep: int = KEEP) -> None:
    """Save `state` as checkpoint-STEP.pt and as checkpoint.pt; delete all but the last `keep` numbered.
    A full disk is said in one line naming the file, what to do and the checkpoint that is kept."""
    data = serialise(state)
    earlier = [step_of(p) for p in numbered(folder) if step_of(p) < step]
    kept = f"{LATEST} (step {max(earlier)}) is kept" if earlier else "no checkpoint had been written yet"
    write_atomic(data, folder / f"checkpoint-{step}.pt", f"{ROOM}; {kept}")
    write_atomic(
        data, folder / LATEST, f"{ROOM}; checkpoint-{step}.pt is whole, and --resume continues from it"
    )
    for old in numbered(folder)[:-keep]:
        old.unlink()


def _what_it_is(head: bytes) -> str:
    """What a file that is not a zip archive is, from its first bytes."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a plain pickle"
    if not any(byte < 9 or 13 < byte < 32 or byte == 127 for byte in head):
        return "a text file"
    return "of a kind fewsight does not know"


def _runs_code(path: Path) -> bool:
    """Whether a plain pickle imports or calls anything when unpickled (its opcodes read, not run)."""
    try:
        return any(op.name in _RUNS_CODE for op, _, _ in pickletools.genops(path.read_bytes()))
    except Exception:  # a pickle cut short: what was read before decides
        return False


def _unsafe(path: Path, detail: str = "") -> FewsightError:
    return FewsightError(
        f"{path} is not a safe fewsight checkpoint: loading it would run code, so it was refused{detail}"
    )


def verify_archive(path: Path, what: str = "a fewsight checkpoint") -> None:
    """Check that `path` is a whole torch zip archive before it is loaded: every member's CRC-32
    (DamagedFile when one fails, or the archive is cut short or empty), and a data.pkl in it (else a
    FewsightError saying what the file is instead, e.g. a JPEG image, not `what`)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        raise DamagedFile(path, "it is empty, 0 bytes")
    if not head.startswith(b"PK\x03\x04"):
        kind = _what_it_is(head)
        if kind == "a plain pickle" and _runs_code(path):
            raise _unsafe(path, " (a plain pickle, not the zip archive torch.save writes)")
        raise FewsightError(f"{path} is {kind}, not {what}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as error:
        raise DamagedFile(path, f"its zip archive is cut short or broken: {error}") from error
    if bad is not None:
        raise DamagedFile(path, f"{bad} in its zip archive fails its CRC-32 check")
    if not any(name.split("/")[-1] == "data.pkl" for name in names):
        raise FewsightError(f"{path} is a zip archive without data.pkl, not {what}")


def load_verified(
    path: Path, device: torch.device | str = "cpu", what: str = "a fewsight checkpoint"
) -> object:
    """What torch.save wrote to `path`, checked by `verify_archive` first, then loaded with
    weights_only (tensors and plain containers, no code is run). Each way it can fail is one line:
    damaged (DamagedFile), not `what` (saying what it is), or unsafe (it would run code)."""
    verify_archive(path, what)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"unsupported GLOBAL (\S+)", str(error), re.IGNORECASE)
        raise _unsafe(path, f" (it calls {refused.group(1)})" if refused else "") from error
    except Exception as error:  # torch reports other problems with many exception types
        raise FewsightError(f"{path} is not {what} (torch.load: {type(error).__name__})") from error


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint, checked and loaded by `load_verified` (no code is run), holding learner weights.
    A damaged file raises DamagedFile; one that is not a checkpoint, or would run code, a one-line
    FewsightError."""
    state = load_verified(path, device)
    if not isinstance(state, dict) or "learner" not in state:
        raise FewsightError(f"{path} is not a fewsight checkpoint (no learner weights in it)")
    return state


def save_best(learner: dict, step: int, validated: dict, folder: Path) -> None:
    """Write best.pt: the weights that scored best in validation, with their step and scores
    (`validated`: val_accuracy and val_loss)."""
    state = {"learner": learner, "step": step, **validated}
    write_atomic(serialise(state), folder / BEST, f"{ROOM}; the last checkpoint is kept")


def rank(validated: dict, best_by: str) -> float:
    """How good validation scores are by --best-by, higher better: the accuracy, or minus the loss
    (-inf for weights saved before the loss was kept)."""
    if best_by == "loss":
        return -float(validated.get("val_loss", math.inf))
    return float(validated["val_accuracy"])


def kept_best(folder: Path) -> list[Path]:
    """The run's best-STEP.pt files (--keep-best), in the order of their steps."""
    found = [(int(m[1]), p) for p in folder.glob("best-*.pt") if (m := _KEPT_BEST.match(p.name))]
    return [path for _, path in sorted(found)]


def kept_scores_until(folder: Path, step: int, best_by: str = "accuracy") -> dict[int, float]:
    """Step -> rank (by `best_by`) of the run's best-STEP.pt files saved by step `step` (where a
    resumed run starts). Later ones are deleted, as the run earns them again; a damaged one too, with
    a warning."""
    scores = {}
    for path in kept_best(folder):
        saved = int(_KEPT_BEST.match(path.name)[1])
        try:
            if saved <= step:
                scores[saved] = rank(read_checkpoint(path), best_by)
                continue
        except DamagedFile as error:
            warnings.warn(f"{error}; it is deleted and left out of the kept weights", stacklevel=2)
        path.unlink()
    return scores


def keep_best(
    learner: dict,
    step: int,
    validated: dict,
    folder: Path,
    scores: dict[int, float],
    keep: int,
    best_by: str = "accuracy",
) -> None:
    """--keep-best: write best-STEP.pt if `validated` ranks among the `keep` best so far (`scores`,
    which this updates), and delete the file it displaces (on a tie the earlier weights stay)."""
    score = rank(validated, best_by)
    if len(scores) >= keep and score <= min(scores.values()):
        return
    state = {"learner": learner, "step": step, **validated}
    write_atomic(serialise(state), folder / f"best-{step}.pt", f"{ROOM}; the last checkpoint is kept")
    scores[step] = score
    while len(scores) > keep:
        worst = min(scores, key=lambda saved: (scores[saved], -saved))
        (folder / f"best-{worst}.pt").unlink(missing_ok=True)
        del scores[worst]


def best_score_until(folder: Path, step: int, best_by: str = "accuracy") -> float:
    """The rank (by `best_by`) of the run's best.pt if it was saved by step `step` (where a resumed
    run starts; a later one is overwritten as the run gets there again), else -inf. A damaged best.pt
    is not used, with a warning: validation writes a new one."""
    path = folder / BEST
    if not path.is_file():
        return -math.inf
    try:
        best = read_checkpoint(path)
    except DamagedFile as error:
        warnings.warn(f"{error}; validation writes a new one when it next scores best", stacklevel=2)
        return -math.inf
    return rank(best, best_by) if best["step"] <= step else -math.inf
