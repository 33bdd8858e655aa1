"""The rules of a run folder: starting a new one or resuming its last checkpoint (which settings may
change, how long it runs, the random generators' states a checkpoint carries), and loading a trained
run's checkpoint and learner."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from shlex import quote
from typing import Any

import torch

from fewsight.algorithms import MetaLearner
from fewsight.errors import FewsightError
from fewsight.run.build import build_learner
from fewsight.run.compact import dequantise
from fewsight.run.config import RunConfig
from fewsight.run.files import BEST, CONFIG, LATEST, DamagedFile, numbered, read_checkpoint


def check_new_folder(out: Path) -> None:
    """Refuse an --out that already holds a run, or is a file."""
    if (out / CONFIG).exists():
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
    so a run may be extended but never cut (a shorter one asked for gets a warning). A schedule over
    the length (`cosine`: cosine or linear) spans the new length from then on: its rate jumps back up,
    which changes what the run learns, so say so."""
    if 1 < asked < saved:  # 1: the length left out of a --resume command (fewsight.cli.common.settings)
        warnings.warn(
            f"--{unit} {asked} is shorter than this run's {saved} {unit}, and a run is never cut: it keeps "
            f"{saved} (--time stops a command sooner; fewsight eval scores any checkpoint)",
            stacklevel=2,
        )
    if asked > saved and cosine:
        warnings.warn(
            f"--{unit} {asked} extends this run from {saved} {unit}: its learning-rate schedule "
            f"now spans {asked} {unit}, so the rate rises again from here (leave --{unit} out to keep "
            f"the run's own {saved})",
            stacklevel=2,
        )
    return max(saved, asked)


def resumable_checkpoint(out: Path, keys: tuple[str, ...], device: torch.device, why_not: str) -> dict | None:
    """The run's last checkpoint, which must hold every one of `keys` to be resumed; if it lacks
    some, a FewsightError: "OUT/checkpoint.pt has no KEYS (`why_not`)". A missing or damaged
    checkpoint.pt gives way to the newest intact checkpoint-STEP.pt, with a one-line warning naming
    both. None, with a warning, for a run stopped before its first checkpoint: it starts again from
    step 0 with its saved settings."""
    latest, kept = out / LATEST, numbered(out)
    if not latest.is_file() and not kept:
        warnings.warn(
            f"{out} has no {LATEST} yet (it stopped before its first one): starting it again from "
            "step 0 with its saved settings",
            stacklevel=2,
        )
        return None
    path, state, problem = newest_intact(out, device)
    if path != latest:
        warnings.warn(f"{problem}; resuming from {path.name} (step {state['step']}) instead", stacklevel=2)
    missing = [key for key in keys if key not in state]
    if missing:
        raise FewsightError(f"{path} has no {', '.join(missing)} ({why_not})")
    return state


def newest_intact(out: Path, device: torch.device | str = "cpu") -> tuple[Path, dict, str]:
    """The checkpoint a run goes on from: checkpoint.pt, or where that is missing or damaged, the
    newest intact checkpoint-STEP.pt kept beside it; with the path and what was wrong with the
    newer ones (a FewsightError when none is intact)."""
    problems = []
    for path in [out / LATEST, *reversed(numbered(out))]:
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        try:
            return path, read_checkpoint(path, device), "; ".join(problems)
        except DamagedFile as error:
            problems.append(f"{path} is damaged ({error.detail})")
    raise FewsightError(
        f"{'; '.join(problems)}; no intact checkpoint is left to resume from: restore one from a "
        "backup, or start the run again with another --out"
    )


def start_or_resume(
    given: Any,
    out: Path,
    resume: bool,
    *,
    length: str,
    adjustable: tuple[str, ...],
    cosine: Callable[[Any], bool],
    keys: tuple[str, ...],
    why_not: str,
    device: torch.device,
    taken: tuple[str, ...] = (),
) -> tuple[Any, dict | None]:
    """The settings and the checkpoint a run starts from. A new run: `given` and None, once `out` is
    checked to hold no run. A resumed one: the run's saved settings (`type(given).load(out)`) with the
    `adjustable` ones that `given` sets (`merge_resume_settings`), its `length` ("steps", "epochs")
    the longer of its own and the one given (`resumed_length`, warning where a `cosine` schedule then
    stretches), the `taken` ones as given (how to run, not what to learn), and its last checkpoint
    (`resumable_checkpoint`)."""
    if not resume:
        check_new_folder(out)
        return given, None
    config = type(given).load(out)
    merge_resume_settings(given, config, adjustable, handled=(length, *taken))
    config.validate()
    asked = resumed_length(getattr(config, length), getattr(given, length), length, cosine(config))
    setattr(config, length, asked)
    for name in taken:
        setattr(config, name, getattr(given, name))
    return config, resumable_checkpoint(out, keys, device, why_not)


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


def load_checkpoint(folder: Path, device: torch.device | str = "cpu", weights: str = "last") -> dict:
    """The run's last checkpoint (`weights="last"`) or its best-validated weights ("best"), checked
    and loaded without executing code (weights_only). A damaged one is refused in one line saying
    what to do: for checkpoint.pt, the intact checkpoint-STEP.pt kept beside it."""
    if weights == "best":
        path = Path(folder) / BEST
        if not path.is_file():
            raise FewsightError(
                f"{folder} has no {BEST}: it is written when validation scores best, and this run has not "
                "validated (--trainval, or not yet --val-every steps); use --weights last"
            )
        try:
            return read_checkpoint(path, device)
        except DamagedFile as error:
            raise error.fixed_by(
                "use --weights last; --resume writes a new one when validation next scores best"
            ) from error
    path = Path(folder) / LATEST
    if not path.is_file() and numbered(Path(folder)):
        raise FewsightError(f"{path} is missing; {_what_to_do(Path(folder))}")
    if not path.is_file():
        raise FewsightError(
            f"{folder} has no {LATEST} yet (it stopped before its first); continue it with "
            f"fewsight {_command(Path(folder))} --resume --out {quote(str(folder))}"
        )
    try:
        return read_checkpoint(path, device)
    except DamagedFile as error:
        raise error.fixed_by(_what_to_do(Path(folder))) from error


def _command(folder: Path) -> str:
    """The command that writes the run folder: pretrain or train."""
    return "pretrain" if "pretrain" in json.loads((folder / CONFIG).read_text()) else "train"


def _what_to_do(folder: Path) -> str:
    """What to do about a damaged or missing checkpoint.pt: copy, or go on from, the newest intact one
    kept (a finished run's --resume trains nothing and so writes no checkpoint.pt: hence the copy)."""
    try:
        kept, state, _ = newest_intact(folder)
    except FewsightError:
        return "no intact checkpoint-STEP.pt is kept beside it: restore it from a backup, or train again"
    return (
        f"{kept.name} (step {state['step']}) is intact: copy it over {LATEST} "
        f"(cp {quote(str(kept))} {quote(str(folder / LATEST))}), "
        f"or go on from it with fewsight {_command(folder)} --resume --out {quote(str(folder))}"
    )


def checkpoint_step(folder: Path, weights: str = "last") -> int | None:
    """The training step of the weights `load_checkpoint` gives (which `eval --json` records, as best.pt
    may be older than the run); None for a checkpoint that records none (a bundled model)."""
    step = load_checkpoint(folder, "cpu", weights).get("step")
    return None if step is None else int(step)


def load_learner(
    folder: Path, device: torch.device | str = "cpu", weights: str = "last"
) -> tuple[RunConfig, MetaLearner]:
    """The config and the trained learner of a run folder (its last or its best-validated weights)."""
    config = RunConfig.load(folder)
    config.validate()
    return config, learner_from(config, load_checkpoint(folder, device, weights), folder, device)


def learner_from(config: RunConfig, state: dict, folder: Path, device: torch.device | str) -> MetaLearner:
    """The learner `config` builds, with the weights of checkpoint `state` (read from run `folder`)."""
    learner = build_learner(config).to(device)
    try:
        learner.load_state_dict(dequantise(state["learner"]))
    except (RuntimeError, TypeError, KeyError) as error:
        raise FewsightError(f"{folder}: the checkpoint does not fit the run's config.json") from error
    return learner
