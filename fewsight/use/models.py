"""Models by name: a run folder or a model bundled with fewsight (fewsight/use/bundled/, run folders
too), loaded for use."""

from __future__ import annotations

from pathlib import Path

import torch

from fewsight.algorithms import MetaLearner
from fewsight.errors import FewsightError
from fewsight.nets.population import STATISTICS_FILE, load_population_statistics
from fewsight.run.config import MODEL_BASED, RunConfig
from fewsight.run.files import LATEST, DamagedFile, load_verified, verify_archive
from fewsight.run.folder import load_learner
from fewsight.use.export import EXPORT_FORMAT

BUNDLED = Path(__file__).parent / "bundled"


def bundled_names() -> list[str]:
    """Names of the models that ship with fewsight."""
    return sorted(p.name for p in BUNDLED.iterdir() if (p / "config.json").is_file())


def resolve_run(model: str | Path) -> Path:
    """The run folder behind a model name or path (bundled models are run folders too); a FewsightError
    saying what `model` is instead (an exported classifier, a checkpoint file, a folder without
    config.json, a damaged file, an image...)."""
    path = Path(model)
    if (path / "config.json").is_file():
        return path
    if str(model) in bundled_names():
        return BUNDLED / str(model)
    needed = f"a run folder or a bundled model ({', '.join(bundled_names())})"
    if path.is_dir():
        has = f"; it holds {LATEST} but not the config.json beside it" if (path / LATEST).is_file() else ""
        raise FewsightError(f"{model} has no config.json, so it is not a run folder{has}; give {needed}")
    if path.is_file():
        state = load_verified(path, "cpu", f"a run folder, an exported classifier or {needed}")
        if isinstance(state, dict) and state.get("format") == EXPORT_FORMAT:
            raise FewsightError(
                f"{model} is an exported classifier: this command takes {needed}; use the exported "
                f"classifier with fewsight predict {model} --query IMAGES"
            )
        beside = (
            f"give its run folder, {path.parent}"
            if (path.parent / "config.json").is_file()
            else f"its folder {path.parent} has no config.json beside it; give {needed}"
        )
        raise FewsightError(f"{model} is a checkpoint file, not a run folder: {beside}")
    raise FewsightError(
        f"{model} is neither a run folder, an exported file nor a bundled model "
        f"({', '.join(bundled_names())}): there is no such file or folder"
    )


def max_ways(config: RunConfig) -> int | None:
    """The number of classes a model must take: the MAML family's head is fixed (its training ways);
    None for the model-based family, which takes any number."""
    return None if config.algorithm in MODEL_BASED else config.ways


def load_model(
    model: str | Path, device: torch.device | str = "cpu", weights: str = "last", norm: str = "model"
) -> tuple[RunConfig, MetaLearner]:
    """Config and learner (in eval mode) of a run folder or bundled model: its last checkpoint, or its
    best-validated weights (`weights="best"`). With norm="model" it normalises as the model ships:
    with the fixed statistics of its population.pt where it has one; norm="task" ignores that file."""
    folder = resolve_run(model)
    reinstall = "reinstall fewsight (pip install --force-reinstall fewsight)"
    try:
        config, learner = load_learner(folder, device, weights)
        if norm == "model" and (folder / STATISTICS_FILE).is_file():
            verify_archive(folder / STATISTICS_FILE, "population statistics")
    except DamagedFile as error:
        if folder.parent == BUNDLED:
            raise error.fixed_by(reinstall) from error
        if error.path.name == STATISTICS_FILE:
            again = f"fewsight eval {folder} --norm population --keep-statistics"
            fix = f"delete it, or estimate them again with {again}"
            raise error.fixed_by(fix) from error
        raise
    if norm == "model":
        load_population_statistics(learner, folder)
    elif norm != "task":
        raise FewsightError(f"unknown norm {norm!r}; use model or task")
    return config, learner.eval()
