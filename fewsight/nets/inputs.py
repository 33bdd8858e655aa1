"""The normalisation of input images a backbone applies first (`fewsight train --input-norm`): none,
so that images in [0, 1] go in as they are, or ImageNet's mean and standard deviation per colour
channel, as the ProtoNet and Meta-Baseline reference code normalise theirs. Being part of the
backbone, it travels with a model to eval, predict and export; it holds no weights of its own."""

from __future__ import annotations

import torch
from torch import nn

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # mean, standard deviation (RGB)
INPUT_NORMS = {"none": None, "imagenet": IMAGENET}


class InputNorm(nn.Module):
    """(x - mean) / std per channel, with constants that are not saved in checkpoints."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("inverse_std", 1 / torch.tensor(std).view(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inverse_std


def input_norm(name: str) -> nn.Module:
    """The module that normalises a backbone's input images: `name` is a key of INPUT_NORMS."""
    constants = INPUT_NORMS[name]
    return nn.Identity() if constants is None else InputNorm(*constants)
