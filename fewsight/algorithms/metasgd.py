"""Meta-SGD (Li et al. 2017): MAML with a learned step size for every parameter entry."""

from __future__ import annotations

import torch
from torch import nn

from fewsight.algorithms.maml import MAML


class MetaSGD(MAML):
    """MAML whose inner step sizes (one per parameter entry, starting at `inner_lr`) are
    meta-learned together with the initialisation. Takes the same arguments as MAML."""

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, **kwargs)
        shapes = dict(model.named_parameters())
        self.rates = nn.ParameterList(
            nn.Parameter(torch.full_like(shapes[name], self.inner_lr)) for name in self.adapted
        )

    def inner_rates(self, step: int) -> dict[str, torch.Tensor | float]:
        return dict(zip(self.adapted, self.rates, strict=True))
