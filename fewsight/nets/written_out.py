"""torch's batch, instance and layer norm written out in plain tensor operations, for torch.func.

torch's fused norm kernels give wrong second-order meta-gradients under ``vmap(grad(...))``: their
batching rules for the double backward are wrong (pytorch/functorch#534). Measured in float64 on a
user's small CNN (MAML, 2 inner steps, Omniglot tasks, torch 2.13 on the CPU): 4e-2 relative error
with ``nn.BatchNorm2d(track_running_stats=False)``, 7e-2 with ``nn.InstanceNorm2d(affine=True)``,
silently. While `WrittenOutNorms()` is active, every call of ``F.batch_norm``, ``F.instance_norm``
and ``F.layer_norm`` (which torch's BatchNorm*, InstanceNorm* and LayerNorm modules make), and of
their ``torch.*`` forms, is computed from ``torch.var_mean`` instead: the same values, with
derivatives that torch.func gets right at every order. The user's module is not changed.

A norm layer that updates running statistics in place (torch's batch and instance norm in training
mode with ``track_running_stats=True``) cannot run for all tasks at once: it raises, and MAML falls
back to its loop over tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from fewsight.nets.batchnorm import TaskBatchNorm

# Modules whose forward calls one of the functions rewritten here.
TORCH_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm)


class RunningStatisticsError(RuntimeError):
    """A norm layer would update its running statistics in place, which vmap over tasks cannot do."""


def _normalise(
    x: torch.Tensor,
    dims: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    affine_shape: Sequence[int],
    statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias, the statistics over `dims` unless given."""
    if statistics is None:
        variance, mean = torch.var_mean(x, dim=list(dims), correction=0, keepdim=True)
    else:
        mean, variance = (s.view(affine_shape) for s in statistics)
    out = (x - mean) * torch.rsqrt(variance + eps)
    if weight is not None:
        out = out * weight.view(affine_shape)
    if bias is not None:
        out = out + bias.view(affine_shape)
    return out


def _refuse_running_update(layer: str) -> None:
    raise RunningStatisticsError(
        f"{layer} updates its running statistics in place at every call, which cannot run for all tasks "
        "at once (use track_running_stats=False, fewsight.TaskBatchNorm or fewsight.replace_batchnorm)"
    )


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """`F.batch_norm`, written out: batch statistics in training (or without running ones)."""
    channels = (1, -1) + (1,) * (input.ndim - 2)
    if training and running_mean is not None:
        _refuse_running_update("a batch norm layer with track_running_stats=True in training mode")
    use_batch = training or running_mean is None
    statistics = None if use_batch else (running_mean, running_var)
    return _normalise(input, [0, *range(2, input.ndim)], weight, bias, eps, channels, statistics)


def instance_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """`F.instance_norm`, written out: each sample's own statistics per channel."""
    channels = (1, -1) + (1,) * (input.ndim - 2)
    if use_input_stats and running_mean is not None:
        _refuse_running_update("an instance norm layer with track_running_stats=True in training mode")
    statistics = None if use_input_stats else (running_mean, running_var)
    return _normalise(input, range(2, input.ndim), weight, bias, eps, channels, statistics)


def layer_norm(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """`F.layer_norm`, written out: statistics over the last len(normalized_shape) dimensions."""
    shape = tuple(normalized_shape)
    return _normalise(input, range(input.ndim - len(shape), input.ndim), weight, bias, eps, shape)


REWRITES = {
    F.batch_norm: batch_norm,
    F.instance_norm: instance_norm,
    F.layer_norm: layer_norm,
    # The torch.* forms, for code that calls them directly (their arguments in another order).
    torch.batch_norm: lambda x, w, b, rm, rv, training, momentum, eps, *_: batch_norm(
        x, rm, rv, w, b, training, momentum, eps
    ),
    torch.instance_norm: lambda x, w, b, rm, rv, use_input_stats, momentum, eps, *_: instance_norm(
        x, rm, rv, w, b, use_input_stats, momentum, eps
    ),
    torch.layer_norm: lambda x, shape, w=None, b=None, eps=1e-5, *_: layer_norm(x, shape, w, b, eps),
}


class WrittenOutNorms(TorchFunctionMode):
    """Within it, torch's batch, instance and layer norm run in their written-out forms."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        rewrite = REWRITES.get(func)
        return (rewrite or func)(*args, **(kwargs or {}))


def calls_torch_norms(model: nn.Module) -> bool:
    """Whether the model may call torch's norm functions: it holds torch's batch, instance or layer
    norm, or a module of the user's own (whose forward may call them directly)."""
    return any(
        isinstance(m, TORCH_NORMS) or not type(m).__module__.startswith(("torch.", "fewsight."))
        for m in model.modules()
    )


def norm_parameters(model: nn.Module) -> list[str]:
    """Names of the scales and shifts of the model's norm layers (fewsight's, torch's and group norm)."""
    norms = (TaskBatchNorm, nn.GroupNorm, *TORCH_NORMS)
    return [
        f"{name}.{part}"
        for name, m in model.named_modules()
        if isinstance(m, norms)
        for part, _ in m.named_parameters(recurse=False)
    ]


def running_statistics_layers(model: nn.Module) -> list[str]:
    """Descriptions of the model's norm layers that update running statistics in training."""
    return [
        f"its {type(m).__name__} {name!r}"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.training
    ]
