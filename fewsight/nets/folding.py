"""Tasks folded into channels: how fewsight's layers run a vmapped batch of tasks as one call of a
torch kernel (each task's channels a group or channels of their own), in their vmap rules."""

from __future__ import annotations

import torch


def tasks_first(value: torch.Tensor, dim: int | None, tasks: int) -> torch.Tensor:
    """A vmapped argument with its task dimension first (repeated for every task if it has none)."""
    return value.expand(tasks, *value.shape) if dim is None else value.movedim(dim, 0)


def fold_channels(x: torch.Tensor) -> torch.Tensor:
    """(T, N, C, ...) -> (N, T*C, ...)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def unfold_channels(x: torch.Tensor, tasks: int) -> torch.Tensor:
    """(N, T*C, ...) -> (T, N, C, ...)."""
    return x.view(x.shape[0], tasks, -1, *x.shape[2:]).transpose(0, 1)


def fold_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(T, N, C, H, W) -> (N, T*C, H, W) channels-last: one copy, or none where x is an unfolded view of
    such a tensor (the output of a convolution, batch norm or pool that got one)."""
    tasks, images, channels, height, width = x.shape
    return x.permute(1, 3, 4, 0, 2).reshape(images, height, width, tasks * channels).permute(0, 3, 1, 2)
