"""A stride-1 'same' convolution whose second derivative is convolutions, for MAML's meta-gradient.

Under vmap over tasks every task's convolution becomes one grouped convolution (a group per task).
torch's double backward of a grouped convolution loops over the groups in Python (a weight-gradient
convolution per task, with layout conversions around each), so a second-order meta-step of 32
Omniglot tasks ran about 300 small kernels for it. Here the backward is written with convolutions
(`conv_transpose2d` for the input, cuDNN's weight gradient for the weight), and so is the backward of
the weight gradient: every derivative is one grouped kernel, whatever the group count. Values and
derivatives are torch's (checked to second order in float64 by tests/test_nets.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.nets.folding import fold_channels, fold_channels_last, tasks_first, unfold_channels


def _padding(weight: torch.Tensor) -> list[int]:
    return [weight.shape[-2] // 2, weight.shape[-1] // 2]


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The gradient of a 'same' convolution with `weight` for its input: a transposed convolution."""
    return F.conv_transpose2d(grad, weight, padding=_padding(weight), groups=groups)


class _KeepsTwoInputs(torch.autograd.Function):
    """Keeps its first two inputs (x and weight, or x and the output gradient) and its last, the
    group count, for the backward pass."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.groups = inputs[3]


class _SameConv(_KeepsTwoInputs):
    """y = conv2d(x, w, b, padding=k//2, groups=groups); backward through `_WeightGrad`. Under vmap
    the tasks become groups of one convolution (`conv_per_task`), written here because a generated
    vmap rule costs much Python per call."""

    @staticmethod
    def forward(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
    ) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):  # vmap runs this without autocast's casts: cast here
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        return F.conv2d(x, weight, bias, padding=_padding(weight), groups=groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        # In the gradient's precision: under autocast the forward ran in bf16, the backward has no
        # autocast (autograd casts each returned gradient to its input's type).
        x, weight = (saved.to(grad.dtype) for saved in ctx.saved_tensors)
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_x = _input_grad(grad, weight, ctx.groups) if needs_x else None
        grad_weight = _WeightGrad.apply(x, grad, weight, ctx.groups) if needs_weight else None
        grad_bias = grad.sum((0, 2, 3)) if needs_bias else None
        return grad_x, grad_weight, grad_bias, None

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple, x: torch.Tensor, weight: torch.Tensor, bias: Any, groups: int
    ) -> tuple:
        return conv_per_task(info.batch_size, in_dims, x, weight, bias, groups), 0


class _WeightGrad(_KeepsTwoInputs):
    """The weight gradient of `_SameConv` (bilinear in x and the output gradient), whose own backward
    is a transposed convolution (for x) and a convolution (for the output gradient)."""

    @staticmethod
    def forward(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        # weight is read for its shape only; output_mask asks for the weight gradient alone.
        return torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], _padding(weight), [1, 1], False, [0, 0], groups,
            [False, True, False],
        )[1]  # fmt: skip

    @staticmethod
    def backward(ctx: Any, grad_of_weight_grad: torch.Tensor) -> tuple:
        x, grad = ctx.saved_tensors
        ggw = grad_of_weight_grad.to(grad.dtype)
        needs_x, needs_grad = ctx.needs_input_grad[:2]
        grad_x = _input_grad(grad, ggw, ctx.groups) if needs_x else None
        grad_grad = F.conv2d(x, ggw, padding=_padding(ggw), groups=ctx.groups) if needs_grad else None
        return grad_x, grad_grad, None, None

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple, x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, groups: int
    ) -> tuple:
        """A weight gradient per task: the tasks as groups."""
        tasks = info.batch_size
        x, grad = tasks_first(x, in_dims[0], tasks), tasks_first(grad, in_dims[1], tasks)
        weight = tasks_first(weight, in_dims[2], tasks).flatten(0, 1)
        folded = _WeightGrad.apply(fold_channels(x), fold_channels(grad), weight, groups * tasks)
        return folded.view(tasks, -1, *folded.shape[1:]), 0


def conv_per_task(
    tasks: int,
    in_dims: tuple,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    widen: bool | None = None,
    channels_last: bool | None = None,
) -> torch.Tensor:
    """`same_conv2d` of every task at once, the vmap rule's work: x, weight and bias with their task
    dimension at `in_dims` (None: shared by all tasks), the output (T, B, C, H, W). Per-task weights
    make the tasks groups of one convolution (as torch's own batching rule does); shared weights make
    them one batch. `widen` (by default on a GPU): see `_with_zero_channel`. `channels_last` (by
    default on a GPU): the tasks folded into channels in channels-last memory, the layout of cuDNN's
    kernels (given the standard layout, cuDNN's conversions to it and back took 19% of the ResNet-12
    MAML step on an H100: docs/BENCHMARKS.md); batch norm and the pool keep it."""
    x = tasks_first(x, in_dims[0], tasks)
    if in_dims[1] is None and in_dims[2] is None:
        output = _SameConv.apply(x.flatten(0, 1), weight, bias, groups)
        return output.view(tasks, x.shape[1], *output.shape[1:])
    weight = tasks_first(weight, in_dims[1], tasks)
    if (x.is_cuda if widen is None else widen) and groups == 1 and weight.shape[2] == 1:
        x, weight = _with_zero_channel(x, weight)
    weight = weight.flatten(0, 1)
    bias = None if bias is None else tasks_first(bias, in_dims[2], tasks).flatten()
    fold = fold_channels_last if (x.is_cuda if channels_last is None else channels_last) else fold_channels
    return unfold_channels(_SameConv.apply(fold(x), weight, bias, groups * tasks), tasks)


def _with_zero_channel(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-channel inputs (T, B, 1, H, W) and their per-task weights (T, O, 1, k, k), each with a zero
    channel beside: the same convolution and derivatives. The tasks' grouped convolution then has two
    input channels a group instead of one, a shape torch gives to cuDNN; with one (Omniglot's first
    layer, a depthwise convolution) a GPU runs torch's own depthwise kernels, 18% of the Omniglot
    MAML step on an H200 (docs/BENCHMARKS.md)."""
    return torch.cat([x, torch.zeros_like(x)], dim=2), torch.cat([weight, torch.zeros_like(weight)], dim=2)


def same_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1
) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=k // 2, groups=groups)` (stride 1, odd kernel), with cheap
    second derivatives. The ONNX tracer gets `F.conv2d` itself."""
    if torch.jit.is_tracing():
        return F.conv2d(x, weight, bias, padding=_padding(weight), groups=groups)
    return _SameConv.apply(x, weight, bias, groups)


class SameConv2d(nn.Conv2d):
    """`nn.Conv2d` with stride 1 and padding k // 2 (odd kernel) computed by `same_conv2d`: the same
    parameters and values, cheaper second-order meta-gradients."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        if kernel_size % 2 == 0:
            raise ValueError(f"SameConv2d needs an odd kernel size, not {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.first_order = False  # torch's F.conv2d outside torch.func: see fewsight.nets.first_order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first_order and not torch._C._are_functorch_transforms_active():
            return super().forward(x)  # nn.Conv2d's own: F.conv2d
        return same_conv2d(x, self.weight, self.bias, self.groups)
