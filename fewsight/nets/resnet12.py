"""ResNet-12: the backbone of MetaOptNet and RFS (widths 64-160-320-640) and of Meta-Baseline
(64-128-256-512), with the same interface as Conv4 and task batch norm, so that every algorithm can
use it functionally."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.nets.batchnorm import TaskBatchNorm
from fewsight.nets.conv import SameConv2d
from fewsight.nets.conv4 import Film
from fewsight.nets.dropblock import drop_block
from fewsight.nets.pooling import leaky_relu_pool

WIDTHS = (64, 160, 320, 640)  # MetaOptNet, RFS
NARROW_WIDTHS = (64, 128, 256, 512)  # Meta-Baseline and Classifier-Baseline (backbone resnet12-512)
DROPBLOCK_SIZE = 5


class ResidualBlock(nn.Module):
    """Three 3x3 conv + batch norm (LeakyReLU 0.1 between), a 1x1 conv + batch norm shortcut, the sum
    through LeakyReLU, a 2x2 max-pool (halves the size), then DropBlock while training (if enabled).

    `film`, a per-channel (scale, shift) pair, conditions the block on a task before its last activation.
    """

    def __init__(self, in_channels: int, out_channels: int, drop_block: bool) -> None:
        super().__init__()
        sizes = [in_channels, out_channels, out_channels, out_channels]
        self.convs = nn.ModuleList(SameConv2d(a, b, 3, bias=False) for a, b in itertools.pairwise(sizes))
        self.norms = nn.ModuleList(TaskBatchNorm(out_channels) for _ in self.convs)
        self.shortcut = SameConv2d(in_channels, out_channels, 1, bias=False)
        self.shortcut_norm = TaskBatchNorm(out_channels)
        self.drop_block = drop_block
        self.drop_rate = 0.0

    def forward(
        self, x: torch.Tensor, context_size: int | None = None, film: Film | None = None
    ) -> torch.Tensor:
        out = x
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            out = norm(conv(out), context_size)
            if index < len(self.convs) - 1:
                out = F.leaky_relu(out, 0.1)
        out = out + self.shortcut_norm(self.shortcut(x), context_size)
        if film is not None:
            out = out * film[0].view(1, -1, 1, 1) + film[1].view(1, -1, 1, 1)
        out = leaky_relu_pool(out, 0.1)
        if self.drop_block and self.training:
            out = drop_block(out, self.drop_rate, DROPBLOCK_SIZE)
        return out


class ResNet12(nn.Module):
    """Four ResidualBlocks, global average pooling, then a linear classifier over `ways` classes (or
    none: `ways=None`). Features (B, widths[-1]): 640 with the paper widths, for any image size >= 16.

    `widths` are the blocks' channels, `width` scales them all (0.125 gives 8-20-40-80, for fast
    tests). DropBlock (block size 5, as in MetaOptNet and RFS) acts in the last two blocks while
    training, at `drop_rate`; change the rate during training with `set_drop_rate` (pre-training
    ramps it up). `.eval()` switches it off.
    """

    def __init__(
        self,
        ways: int | None,
        in_channels: int = 3,
        width: float = 1.0,
        drop_rate: float = 0.0,
        widths: tuple[int, ...] = WIDTHS,
    ) -> None:
        super().__init__()
        widths = [max(1, round(width * w)) for w in widths]
        self.block_channels = widths
        sizes = [in_channels, *widths]
        self.blocks = nn.ModuleList(
            ResidualBlock(a, b, drop_block=index >= 2)
            for index, (a, b) in enumerate(itertools.pairwise(sizes))
        )
        self.feature_size = self.channels = widths[-1]
        self.head = nn.Identity() if ways is None else nn.Linear(self.feature_size, ways)
        self.input_norm: nn.Module = nn.Identity()  # fewsight.nets.inputs: set by the run's config
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
        self.set_drop_rate(drop_rate)

    def set_drop_rate(self, rate: float) -> None:
        """The DropBlock rate of the last two blocks (0 switches it off)."""
        for block in self.blocks:
            block.drop_rate = rate

    def features(
        self, x: torch.Tensor, context_size: int | None = None, films: list[Film] | None = None
    ) -> torch.Tensor:
        """Average-pooled backbone features (B, feature_size); `films` conditions each block."""
        x = self.input_norm(x)
        for index, block in enumerate(self.blocks):
            x = block(x, context_size, None if films is None else films[index])
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, context_size: int | None = None) -> torch.Tensor:
        return self.head(self.features(x, context_size))
