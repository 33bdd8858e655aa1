"""Models by name: a run folder or a model bundled with fewsight (fewsight/use/bundled/, run folders
too), loaded for use."""

from __future__ import annotations

from pathlib import Path

import torch

from fewsight.algorithms import MetaLearner
from fewsight.errors import FewsightError
from fewsight.nets.population import load_population_statistics
from fewsight.run.config import MODEL_BASED, RunConfig
from fewsight.run.folder import load_learner

BUNDLED = Path(__file__).parent / "bundled"


def bundled_names() -> list[str]:
    """Names of the models that ship with fewsight."""
    return sorted(p.name for p in BUNDLED.iterdir() if (p / "config.json").is_file())


def resolve_run(model: str | Path) -> Path:
    """The run folder behind a model name or path (bundled models are run folders too)."""
    path = Path(model)
    if (path / "config.json").is_file():
        return path
    if str(model) in bundled_names():
        return BUNDLED / str(model)
    raise FewsightError(
        f"{model} is neither a run folder, an exported file nor a bundled model "
        f"({', '.join(bundled_names())})"
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
    config, learner = load_learner(folder, device, weights)
    if norm == "model":
        load_population_statistics(learner, folder)
    elif norm != "task":
        raise FewsightError(f"unknown norm {norm!r}; use model or task")
    return config, learner.eval()
