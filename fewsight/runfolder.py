"""What meta-training and pre-training share about a run folder: starting a new one or resuming the
last checkpoint, the random generators' states a checkpoint carries, the metrics log cut back to the
checkpoint on resume, and the device and precision a run trains with."""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import fields
from pathlib import Path

import torch

from fewsight.checkpoints import LATEST, write_atomic
from fewsight.errors import FewsightError
from fewsight.runs import load_checkpoint


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast when `enabled` (a FewsightError on a GPU without bf16), else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FewsightError("this GPU has no bf16 support; drop --bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)  # graph-safe


def check_new_folder(out: Path) -> None:
    """Refuse an --out that already holds a run, or is a file."""
    if (out / "config.json").exists():
        raise FewsightError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise FewsightError(f"{out} is a file; --out must name a folder")


def merge_resume_settings(
    given: object, saved: object, adjustable: tuple[str, ...], handled: tuple[str, ...] = ()
) -> None:
    """Check a resume command's settings `given` against the run's `saved` ones, then copy the
    `adjustable` ones it sets into `saved` (how the run logs, validates and checkpoints may change
    without changing what it learns). A setting left at its default is not set (a short `--resume`
    command names none); any other that differs is refused, as it would otherwise be ignored without
    a word. The `handled` ones are the caller's to merge."""
    defaults = type(given)()
    set_here = [f.name for f in fields(given) if getattr(given, f.name) != getattr(defaults, f.name)]
    may_change = (*handled, *adjustable)
    changed = [n for n in set_here if n not in may_change and getattr(given, n) != getattr(saved, n)]
    if changed:
        differences = ", ".join(
            f"--{name.replace('_', '-')} {getattr(given, name)} (the run's: {getattr(saved, name)})"
            for name in changed
        )
        raise FewsightError(
            f"--resume continues a run with its own settings, but this command changes {differences}; "
            f"drop those flags, or start a new run with another --out (these may change: "
            f"{', '.join('--' + name.replace('_', '-') for name in may_change)})"
        )
    for name in set_here:
        if name in adjustable:
            setattr(saved, name, getattr(given, name))


def resumed_length(saved: int, asked: int, unit: str, cosine: bool) -> int:
    """A resumed run's length in `unit` (steps, epochs): the longer of its own and the one asked for,
    so a run may be extended but never cut. A cosine schedule spans the new length from then on: its
    rate jumps back up, which changes what the run learns, so say so."""
    if asked > saved and cosine:
        warnings.warn(
            f"--{unit} {asked} extends this run from {saved} {unit}: its cosine learning-rate schedule "
            f"now spans {asked} {unit}, so the rate rises again from here (leave --{unit} out to keep "
            f"the run's own {saved})",
            stacklevel=2,
        )
    return max(saved, asked)


def resumable_checkpoint(out: Path, keys: tuple[str, ...], device: torch.device, why_not: str) -> dict | None:
    """The run's last checkpoint, which must hold every one of `keys` to be resumed; if it lacks
    some, a FewsightError: "OUT/checkpoint.pt has no KEYS (`why_not`)". None, with a warning, for a
    run stopped before its first checkpoint: it starts again from step 0 with its saved settings."""
    if not (out / LATEST).is_file():
        warnings.warn(
            f"{out} has no {LATEST} yet (it stopped before its first one): starting it again from "
            "step 0 with its saved settings",
            stacklevel=2,
        )
        return None
    state = load_checkpoint(out, device)
    missing = [key for key in keys if key not in state]
    if missing:
        raise FewsightError(f"{out}/checkpoint.pt has no {', '.join(missing)} ({why_not})")
    return state


def random_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The global random generators' states, for a checkpoint (torch's, and the GPU's on a GPU)."""
    states = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    return states


def restore_random_states(state: dict, device: torch.device) -> None:
    """Put back the generators' states that `random_states` saved into a checkpoint."""
    torch.set_rng_state(state["torch_rng"].cpu())
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)


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
