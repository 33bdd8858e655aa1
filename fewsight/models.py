"""Models by name: a run folder, an exported classifier file, or a model bundled with fewsight."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from fewsight.algorithms import MAML, AdaptedClassifier, MetaLearner, ParameterPredictor, PredictedClassifier
from fewsight.errors import FewsightError
from fewsight.nets.population import load_population_statistics
from fewsight.onnx_export import onnx_bytes
from fewsight.run.build import build_learner
from fewsight.run.config import MODEL_BASED, RunConfig
from fewsight.run.files import serialise, write_atomic
from fewsight.run.folder import load_learner

BUNDLED = Path(__file__).parent / "models"
EXPORT_FORMAT = "fewsight-classifier/1"


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


def adapted_state(classifier: nn.Module) -> dict[str, torch.Tensor]:
    """The task-specific tensors of an adapted classifier (MAML's parameters or a predicted head)."""
    if isinstance(classifier, AdaptedClassifier):
        return classifier.params
    if isinstance(classifier, PredictedClassifier):
        return classifier.head
    raise FewsightError("only classifiers returned by a fewsight learner's adapt() can be exported")


EXPORT_FORMATS = ("pt", "onnx")


def classifier_bytes(
    config: RunConfig, classifier: nn.Module, class_names: list[str], format: str = "pt"
) -> bytes:
    """An adapted classifier as the bytes of one file: fewsight's own (`pt`, weights_only-loadable:
    tensors and strings) or an ONNX model (`onnx`, see fewsight/onnx_export.py).

    The `pt` file holds the meta-learned weights, the task's adapted parameters or predicted head,
    the class names and the support images (uint8) whose statistics normalise queries in
    non-transductive mode.
    """
    if format == "onnx":
        return onnx_bytes(classifier, config, class_names)
    if format != "pt":
        raise FewsightError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    support = (classifier.support_x * 255).round().to(torch.uint8).cpu()
    state = {
        "format": EXPORT_FORMAT,
        "config": json.dumps(asdict(config)),
        "learner": {k: v.cpu() for k, v in classifier.learner.state_dict().items()},
        "adapted": {k: v.detach().cpu() for k, v in adapted_state(classifier).items()},
        "class_names": list(class_names),
        "support_x": support,
    }
    return serialise(state)


def export_classifier(
    config: RunConfig, classifier: nn.Module, class_names: list[str], out: Path, format: str = "pt"
) -> None:
    """Write an adapted classifier as one small file (see `classifier_bytes`)."""
    data = classifier_bytes(config, classifier, class_names, format)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(data, out)


def load_exported(path: Path, device: torch.device | str = "cpu") -> tuple[RunConfig, nn.Module, list[str]]:
    """The config, classifier and class names saved by `export_classifier`."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise FewsightError(
            f"{path} is not a fewsight classifier file ({error.__class__.__name__})"
        ) from error
    if not isinstance(state, dict) or state.get("format") != EXPORT_FORMAT:
        raise FewsightError(f"{path} is not a fewsight classifier file (written by fewsight export)")
    config = RunConfig(**json.loads(state["config"]))
    learner = build_learner(config).to(device).eval()
    learner.load_state_dict(state["learner"])
    support_x = state["support_x"].to(torch.get_default_dtype()) / 255
    if isinstance(learner, MAML):
        classifier: nn.Module = AdaptedClassifier(learner, state["adapted"], support_x)
    elif isinstance(learner, ParameterPredictor):
        classifier = PredictedClassifier(learner, state["adapted"], support_x)
    else:
        raise FewsightError(f"{path}: unknown learner {type(learner).__name__}")
    return config, classifier, state["class_names"]


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
