"""An adapted classifier as one small file: fewsight's own (`pt`) or ONNX, and back."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from fewsight.algorithms import MAML, AdaptedClassifier, ParameterPredictor, PredictedClassifier
from fewsight.errors import FewsightError
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.run.files import DamagedFile, load_verified, make_folder, serialise, write_atomic
from fewsight.use.onnx import onnx_bytes

EXPORT_FORMAT = "fewsight-classifier/1"


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
    tensors and strings) or an ONNX model (`onnx`, see fewsight/use/onnx.py).

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
    make_folder(out.parent, "--out", out)
    write_atomic(data, out, "free some space on that disk, or export to another --out on a disk with room")


def load_exported(path: Path, device: torch.device | str = "cpu") -> tuple[RunConfig, nn.Module, list[str]]:
    """The config, classifier and class names saved by `export_classifier`."""
    try:
        state = load_verified(path, device, "a fewsight classifier file (written by fewsight export)")
    except DamagedFile as error:
        raise error.fixed_by("export it again with fewsight export") from error
    if isinstance(state, dict) and "learner" in state and "format" not in state:
        raise FewsightError(
            f"{path} is a run's checkpoint, not an exported classifier: give its run folder with "
            "--support DIR, or a file written by fewsight export"
        )
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
