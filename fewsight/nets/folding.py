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
