"""Conv4: the four-block backbone of the MAML and Prototypical Networks papers, with a linear head."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from fewsight.nets.batchnorm import TaskBatchNorm
from fewsight.nets.conv import SameConv2d
from fewsight.nets.pooling import pool_relu

Film = tuple[torch.Tensor, torch.Tensor]


class ConvBlock(nn.Module):
    """3x3 convolution, batch norm, ReLU, 2x2 max-pool: halves the spatial size. (The pool runs
    before the ReLU: both orders give the same values, as ReLU is monotone.)

    `film`, a per-channel (scale, shift) pair of shape (C,) each, conditions the block on a task
    (feature-wise linear modulation after the norm), as the task-conditioned hypernetwork does.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = SameConv2d(in_channels, out_channels, 3)
        self.norm = TaskBatchNorm(out_channels)

    def forward(
        self, x: torch.Tensor, context_size: int | None = None, film: Film | None = None
    ) -> torch.Tensor:
        x = self.norm(self.conv(x), context_size)
        if film is not None:
            x = x * film[0].view(1, -1, 1, 1) + film[1].view(1, -1, 1, 1)
        return pool_relu(x)  # = pool(relu(x)), with the ReLU on a quarter of the values


class Conv4(nn.Module):
    """Four ConvBlocks then a linear classifier over `ways` classes (or none: `ways=None`).

    64 channels for Omniglot (28x28 -> 1x1x64 features), 32 for 84x84 images (5x5x32 = 800).
    Input (B, in_channels, size, size); output logits (B, ways), or features (B, feature_size)
    when `ways` is None.
    """

    def __init__(
        self, ways: int | None, in_channels: int = 1, hidden: int = 64, image_size: int = 28
    ) -> None:
        super().__init__()
        channels = [in_channels, hidden, hidden, hidden, hidden]
        self.blocks = nn.ModuleList(ConvBlock(a, b) for a, b in itertools.pairwise(channels))
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"image size {image_size} is too small for Conv4 (at least 16)")
        self.feature_size = hidden * side * side
        self.channels = hidden
        self.block_channels = channels[1:]
        self.head = nn.Identity() if ways is None else nn.Linear(self.feature_size, ways)

    def features(
        self, x: torch.Tensor, context_size: int | None = None, films: list[Film] | None = None
    ) -> torch.Tensor:
        """Flattened backbone features (B, feature_size); `films` conditions each block."""
        for index, block in enumerate(self.blocks):
            x = block(x, context_size, None if films is None else films[index])
        return x.flatten(1)

    def forward(self, x: torch.Tensor, context_size: int | None = None) -> torch.Tensor:
        return self.head(self.features(x, context_size))
