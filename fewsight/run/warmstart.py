"""Start a learner's backbone from another run's (`fewsight train --init RUN`): the weights behind
Baseline++, RFS and Meta-Baseline come from base-class pre-training (`fewsight pretrain`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fewsight.algorithms import MAML, MetaLearner, ParameterPredictor
from fewsight.errors import FewsightError
from fewsight.run.build import build_backbone
from fewsight.run.config import RunConfig
from fewsight.run.folder import load_learner


def backbone_of(learner: MetaLearner) -> nn.Module:
    """The backbone inside a learner: the MAML family's model, the model-based family's encoder."""
    if isinstance(learner, MAML):
        return learner.model
    if isinstance(learner, ParameterPredictor):
        return learner.encoder
    raise FewsightError(f"{type(learner).__name__} has no backbone that --init can set")


def backbone_weights(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state without its linear head (which depends on the classes)."""
    return {name: value for name, value in backbone.state_dict().items() if not name.startswith("head.")}


def run_backbone(run: Path, config: RunConfig | None = None) -> dict[str, torch.Tensor]:
    """The backbone weights (head excluded) of a pre-training or training run folder, on the CPU;
    with `config`, checked to fit the backbone that config builds (before any data is loaded)."""
    source, learner = load_learner(Path(run), "cpu")
    weights = backbone_weights(backbone_of(learner))
    if config is not None:
        _check_fits(weights, build_backbone(config, None), str(run))
        if source.input_norm != config.input_norm:
            theirs, ours = source.input_norm, config.input_norm
            raise FewsightError(
                f"--init {run}: its backbone takes input images normalised by --input-norm {theirs}, "
                f"this run's by {ours}; use --input-norm {theirs}"
            )
    return weights


def load_backbone(learner: MetaLearner, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy `weights` (from run_backbone) into the learner's backbone; its head keeps its initialisation."""
    backbone = backbone_of(learner)
    _check_fits(weights, backbone, source)
    backbone.load_state_dict(weights, strict=False)


def _check_fits(weights: dict[str, torch.Tensor], backbone: nn.Module, source: str) -> None:
    """Raise a FewsightError unless `weights` have the names and shapes of the backbone's (head excluded)."""
    expected = backbone_weights(backbone)
    fix = "use the same --backbone, --width and data set (channels) as that run"
    if weights.keys() != expected.keys():
        raise FewsightError(f"--init {source}: its backbone has other layers than this run's; {fix}")
    for name, value in weights.items():
        if value.shape != expected[name].shape:
            raise FewsightError(
                f"--init {source}: {name} is {tuple(value.shape)} there, {tuple(expected[name].shape)} here; "
                + fix
            )
