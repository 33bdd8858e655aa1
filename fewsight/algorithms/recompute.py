"""Activation checkpointing for an inner step that torch.utils.checkpoint cannot take.

torch.utils.checkpoint relies on saved-tensor hooks, which torch.func.grad refuses, so the vectorised
inner loop could not be checkpointed with it. `recompute` runs a step without keeping its graph and,
in the backward pass, runs it again with the graph and back-propagates through it: the outer graph
keeps only the step's inputs, and the meta-gradient stays exact (second order included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, step, inputs: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        device = tensors[0].device.type
        ctx.step, ctx.inputs = step, inputs
        ctx.autocast = device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        ctx.save_for_backward(*tensors)
        return tuple(step(*tensors[:inputs]))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        inputs = [x.detach().requires_grad_(x.requires_grad) for x in saved[: ctx.inputs]]
        leaves = saved[ctx.inputs :]  # the parameters `step` reads by itself
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            outputs = ctx.step(*inputs)
        wanted = [x for x in (*inputs, *leaves) if x.requires_grad]
        found = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True))
        return (None, None, *(next(found) if x.requires_grad else None for x in (*inputs, *leaves)))


def recompute(
    step: Callable[..., Sequence[torch.Tensor]],
    inputs: Sequence[torch.Tensor],
    leaves: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """`step(*inputs)`, whose graph is rebuilt during the backward pass instead of kept.

    `leaves` are the parameters `step` uses without taking them as arguments (they receive their
    gradients through this call).
    """
    return _Recompute.apply(step, len(inputs), *inputs, *leaves)
