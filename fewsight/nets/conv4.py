"""Conv4: the four-block backbone of the MAML and Prototypical Networks papers, with a linear head."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from fewsight.nets.batchnorm import TaskBatchNorm, batch_norm_per_task
from fewsight.nets.conv import SameConv2d, conv_per_task
from fewsight.nets.pooling import pool_relu, pool_relu_per_task

Film = tuple[torch.Tensor, torch.Tensor]


class _BlockPerTask(torch.autograd.Function):
    """A ConvBlock's convolution, batch norm and pool as one custom Function call under vmap over
    tasks, instead of three: under torch.func each call costs much Python (torch's
    `custom_function_call`), and MAML's vectorised forward makes these calls (issue 25). Its vmap rule
    runs the three layers' own rules in turn: the same kernels as the three calls. It is applied only
    where vmap is the innermost transform, so that nothing differentiates it itself."""

    @staticmethod
    def forward(*args: Any) -> torch.Tensor:
        raise RuntimeError("_BlockPerTask runs under vmap only (its vmap rule)")

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        pass

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        groups: int,
        scale: torch.Tensor,
        shift: torch.Tensor,
        eps: float,
    ) -> tuple:
        tasks = info.batch_size
        x = conv_per_task(tasks, in_dims[:3], x, weight, bias, groups)
        x = batch_norm_per_task(tasks, (0, *in_dims[4:6]), x, scale, shift, eps)[0]
        return pool_relu_per_task(tasks, 0, x)[0], 0


def _vmap_innermost() -> bool:
    """Whether the innermost torch.func transform running is vmap (a private query of torch's)."""
    interpreter = torch._C._functorch.peek_interpreter_stack()
    return interpreter is not None and interpreter.key() == torch._C._functorch.TransformType.Vmap


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
        conv, norm = self.conv, self.norm
        if film is None and context_size is None and norm.population_mean is None and _vmap_innermost():
            # One custom Function call under MAML's vectorised forward instead of three.
            block = (conv.weight, conv.bias, conv.groups, norm.weight, norm.bias, norm.eps)
            return _BlockPerTask.apply(x, *block)
        x = norm(conv(x), context_size)
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
        self.input_norm: nn.Module = nn.Identity()  # fewsight.nets.inputs: set by the run's config

    def features(
        self, x: torch.Tensor, context_size: int | None = None, films: list[Film] | None = None
    ) -> torch.Tensor:
        """Flattened backbone features (B, feature_size); `films` conditions each block."""
        x = self.input_norm(x)
        for index, block in enumerate(self.blocks):
            x = block(x, context_size, None if films is None else films[index])
        return x.flatten(1)

    def forward(self, x: torch.Tensor, context_size: int | None = None) -> torch.Tensor:
        return self.head(self.features(x, context_size))
