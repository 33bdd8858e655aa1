"""2x2 max-pool then ReLU (Conv4's block ending) or leaky ReLU (ResNet-12's) that stays in the layout
of the layers before it under vmap over tasks.

torch's batching rule for max-pool flattens tasks and images into one batch, which costs a copy of
the activations whenever they come from fewsight's folded convolution and batch norm (tasks folded
into channels), forward and backward: about 4 GB of copies per Omniglot meta-step of 32 tasks
(benchmarks/op_count.py). Pooling is per channel, so here the tasks are folded into the channels as
well, and the pooled output goes on in the same layout. Values and derivatives are torch's (checked
to second order in float64 by tests/test_nets.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fewsight.nets.folding import fold_channels, tasks_first, unfold_channels


class _PoolReLU(torch.autograd.Function):
    """leaky_relu(max_pool2d(x, 2), negative_slope) (0: ReLU) and the pool's argmax indices
    (B, C, H/2, W/2)."""

    @staticmethod
    def forward(x: torch.Tensor, negative_slope: float) -> tuple:
        pooled, indices = max_pool2_with_indices(x)
        return (F.leaky_relu(pooled, negative_slope) if negative_slope else pooled.relu()), indices

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, outputs: tuple) -> None:
        ctx.save_for_backward(inputs[0], *outputs)
        ctx.negative_slope = inputs[1]
        ctx.mark_non_differentiable(outputs[1])
        ctx.set_materialize_grads(False)  # no zero-filled int64 gradient for the indices: None instead

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None, _indices: None) -> tuple:
        if grad is None:
            return None, None
        x, output, indices = ctx.saved_tensors
        # The activation's derivative is a mask (or a slope) from the output: linear in grad.
        if ctx.negative_slope:
            grad = torch.ops.aten.leaky_relu_backward(grad, output.detach(), ctx.negative_slope, True)
        else:
            grad = torch.ops.aten.threshold_backward(grad, output.detach(), 0)
        if torch.is_grad_enabled() and torch._C._are_functorch_transforms_active():
            return _PoolBackward.apply(grad, x, indices), None
        return _pool_backward(grad, x, indices), None  # plain autograd differentiates torch's kernel

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: torch.Tensor, negative_slope: float) -> tuple:
        return pool_relu_per_task(info.batch_size, in_dims[0], x, negative_slope), (0, 0)


def pool_relu_per_task(
    tasks: int, in_dim: int | None, x: torch.Tensor, negative_slope: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_PoolReLU` of every task at once, the vmap rule's work: x with its task dimension at `in_dim`,
    the tasks folded into the channels; (output, indices) with the tasks first."""
    output, indices = _PoolReLU.apply(fold_channels(tasks_first(x, in_dim, tasks)), negative_slope)
    return unfold_channels(output, tasks), unfold_channels(indices, tasks)


class _PoolBackward(torch.autograd.Function):
    """The pool's input gradient (the output gradient scattered to the argmax positions), as a
    function that torch.func can differentiate again: under vmap, torch's kernel on the tasks folded
    into channels, which plain autograd below differentiates with torch's own double backward."""

    @staticmethod
    def forward(grad: torch.Tensor, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return _pool_backward(grad, x, indices)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx: Any, grad_of_input_grad: torch.Tensor) -> tuple:
        (indices,) = ctx.saved_tensors  # linear in grad: its derivative gathers at the argmax
        gathered = grad_of_input_grad.flatten(-2).gather(-1, indices.flatten(-2)).view(indices.shape)
        return gathered, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, grad: torch.Tensor, x: torch.Tensor, indices: torch.Tensor) -> tuple:
        tasks = info.batch_size
        folded = [
            fold_channels(tasks_first(t, d, tasks)) for t, d in zip((grad, x, indices), in_dims, strict=True)
        ]
        if torch._C._are_functorch_transforms_active():  # more transforms below: fold again there
            input_grad = _PoolBackward.apply(*folded)
        else:
            input_grad = _pool_backward(*folded)
        return unfold_channels(input_grad, tasks), 0


def _pool_backward(grad: torch.Tensor, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The pool's input gradient: `grad` scattered to the argmax `indices`. x gives only the shape, so
    it is detached: torch's double backward would otherwise fill a zero gradient of x's size for it."""
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad, x.detach(), [2, 2], [2, 2], [0, 0], [1, 1], False, indices
    )


def max_pool2_with_indices(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`F.max_pool2d(x, 2, return_indices=True)` of (B, C, H, W): the same values and indices, on the
    CPU computed channels-last, where torch's kernel runs several times faster (docs/BENCHMARKS.md),
    and given back in x's layout."""
    if x.device.type != "cpu" or x.is_contiguous(memory_format=torch.channels_last):
        return F.max_pool2d(x, 2, return_indices=True)
    pooled, indices = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2, return_indices=True)
    return pooled.contiguous(), indices.contiguous()


def pool_relu(x: torch.Tensor) -> torch.Tensor:
    """`F.relu(F.max_pool2d(x, 2))` for (B, C, H, W), staying in the folded layout under vmap. The
    ONNX tracer gets torch's functions themselves."""
    if torch.jit.is_tracing():
        return F.relu(F.max_pool2d(x, 2))
    return _PoolReLU.apply(x, 0.0)[0]


def leaky_relu_pool(x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """`F.max_pool2d(F.leaky_relu(x, negative_slope), 2)` for (B, C, H, W) (ResNet-12's block ending).
    Under torch.func's transforms (vmap over tasks) it stays in the folded layout, pooling before the
    activation (the same values and argmax, as a leaky ReLU is increasing); elsewhere it is torch's
    own functions, as before."""
    if torch._C._are_functorch_transforms_active():
        return _PoolReLU.apply(x, negative_slope)[0]
    return F.max_pool2d(F.leaky_relu(x, negative_slope), 2)
