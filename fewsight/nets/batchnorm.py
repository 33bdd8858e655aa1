"""Batch norm with statistics from the task's own batch, computed by torch's fused kernel, with
derivatives that stay right and fast under torch.func.

torch's own `F.batch_norm` gives wrong second-order meta-gradients under ``vmap(grad(...))``, 7e-2
(relative, float64) off the per-task reference on torch 2.11 / H100 and 0.18 (absolute) on torch 2.13 /
CPU: its backward's batching rule is known to be wrong (pytorch/functorch#534). `batch_norm` below
never meets that rule: under vmap it folds the tasks into the channels (each task's channel is a
channel of its own, so (T, B, C, ...) is one batch norm of (B, T*C, ...)) and calls the fused kernel
once. Its backward is the fused kernel too (differentiable again under plain autograd), except where
torch.func needs a graph of it (``torch.func.grad`` under vmap, as in Reptile; MAML's meta-loss
takes its inner gradients with plain autograd, outside its vmap): there it is written out from the
statistics, recomputed so that it differentiates in x.
No running statistics are kept: every call normalises with the statistics of the batch it is given
(transductive, as in the MAML paper), or, with ``context_size``, with those of the first
``context_size`` samples only (non-transductive: queries are normalised with the support set's
statistics, so each query is classified independently of the others; written out, as is the form
the ONNX tracer gets). `fewsight.nets.population` can instead fix statistics estimated over many
images, as torch's running statistics are (each sample then normalised on its own).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.nets.folding import fold_channels, tasks_first, unfold_channels

POPULATION_BUFFERS = ("population_mean", "population_var")  # fixed statistics, None until estimated


class TaskBatchNorm(nn.Module):
    """Per-channel normalisation of (B, C, ...) with a learned scale and shift, no running state."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        # Fixed statistics, set only by fewsight.nets.population for evaluation (None: not kept).
        self.register_buffer("population_mean", None)
        self.register_buffer("population_var", None)
        # Samples per normalisation group, set only within `normalised_in_groups` (0: the whole batch).
        self.group_size = 0
        self.first_order = False  # torch's F.batch_norm outside torch.func: fewsight.nets.first_order

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """A state dict sets the population statistics where it holds them (a model that ships them,
        an exported classifier) and clears them where it does not."""
        for name in POPULATION_BUFFERS:
            kept = prefix + name in state_dict
            setattr(self, name, torch.empty_like(self.weight.detach()) if kept else None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, context_size: int | None = None) -> torch.Tensor:
        if self.population_mean is not None:  # each sample normalised on its own, as eval-mode torch
            return F.batch_norm(
                x, self.population_mean, self.population_var, self.weight, self.bias, False, 0.0, self.eps
            )
        transformed = torch._C._are_functorch_transforms_active()
        if context_size is None and 0 < self.group_size < x.shape[0] and not transformed:
            return self._grouped(x)
        if context_size is None and self.first_order and not transformed:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        if context_size is None and not torch.jit.is_tracing():  # the tracer cannot export it
            return batch_norm(x, self.weight, self.bias, self.eps)
        context = x if context_size is None else x[:context_size]
        dims = [0, *range(2, x.ndim)]
        # One pass for both statistics and one fused multiply-add.
        variance, mean = torch.var_mean(context, dim=dims, correction=0, keepdim=True)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = self.weight.view(shape) * torch.rsqrt(variance + self.eps)
        return torch.addcmul(self.bias.view(shape), x - mean, scale)

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """x normalised in consecutive groups of `group_size` samples, each with its own statistics, in
        x's own layout (channels-last in pre-training and Meta-Baseline's stage): see
        `_GroupedBatchNorm`."""
        if x.shape[0] % self.group_size:
            raise RuntimeError(f"a batch of {x.shape[0]} does not split into groups of {self.group_size}")
        return _GroupedBatchNorm.apply(x, self.weight, self.bias, self.eps, self.group_size)[0]


@contextlib.contextmanager
def normalised_in_groups(model: nn.Module, size: int) -> Iterator[nn.Module]:
    """Within it, every TaskBatchNorm of `model` normalises a batch in consecutive groups of `size`
    samples, each with its own statistics (0: the whole batch at once), as `size` samples on each GPU
    under nn.DataParallel are normalised (pre-training's --bn-batch, the stage's --step-statistics-tasks).
    Not for vmap or a context size: those paths ignore the groups."""
    norms = [module for module in model.modules() if isinstance(module, TaskBatchNorm)]
    for norm in norms:
        norm.group_size = size
    try:
        yield model
    finally:
        for norm in norms:
            norm.group_size = 0


class _BatchNorm(torch.autograd.Function):
    """Training-mode batch norm of (B, C, ...) with the batch's statistics: (output, mean, 1/std)."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> tuple:
        output, mean, inverse_std = torch.ops.aten.native_batch_norm(
            x, weight, bias, None, None, True, 0.0, eps
        )[:3]
        return output, mean, inverse_std

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, outputs: tuple) -> None:
        x, weight, _, ctx.eps = inputs
        ctx.save_for_backward(x, weight, outputs[1], outputs[2])
        ctx.mark_non_differentiable(outputs[1], outputs[2])
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the statistics: None instead

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None, _mean: None, _inverse_std: None) -> tuple:
        if grad is None:
            return None, None, None, None
        x, weight, mean, inverse_std = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:3])
        if not torch.is_grad_enabled():  # no graph of the backward is wanted: the fused kernel
            grads = torch.ops.aten.native_batch_norm_backward(
                grad, x, weight, None, None, mean, inverse_std, True, ctx.eps, needs
            )
            return (*grads, None)
        if not torch._C._are_functorch_transforms_active():
            # Plain autograd records a graph of the backward (MAML's inner gradients): the fused kernel,
            # with the closed-form double backward of `_BatchNormBackward`.
            return (*_BatchNormBackward.apply(grad, x, weight, mean, inverse_std, ctx.eps, needs), None)
        # Under torch.func, where the fused backward's batching rule is wrong: written out, with the
        # statistics recomputed from x so that the graph reaches x through them (in float32 at least:
        # x may be bf16 under autocast).
        dtype = torch.promote_types(x.dtype, weight.dtype)
        x, grad = x.to(dtype), grad.to(dtype)
        dims = [0, *range(2, x.ndim)]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        variance, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
        inverse_std = torch.rsqrt(variance + ctx.eps)
        normalised = (x - mean) * inverse_std
        grad_bias = grad.sum(dims)
        grad_weight = (grad * normalised).sum(dims)
        count = x.numel() // x.shape[1]
        centred = grad - (grad_bias / count).view(shape) - normalised * (grad_weight / count).view(shape)
        grad_x = weight.view(shape) * inverse_std * centred
        return grad_x.to(x.dtype), grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> tuple:
        return batch_norm_per_task(info.batch_size, in_dims, x, weight, bias, eps), (0, 0, 0)


class _GroupedBatchNorm(torch.autograd.Function):
    """`_BatchNorm` of consecutive groups of `size` samples (views of x), each with its own statistics,
    as one autograd call: the fused kernel on each group, the outputs joined (one copy forward and one
    backward). With an autograd call per group, the groups of 32 of a ResNet-12 pre-training pass of
    128 images made 826 kernel launches to 362 and spent more time in Python than on an H100's GPU
    (1.77x the pass without groups; docs/BENCHMARKS.md). (output, means, 1/stds), a row per group."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, size: int) -> tuple:
        outputs, means, inverse_stds = zip(
            *(
                torch.ops.aten.native_batch_norm(group, weight, bias, None, None, True, 0.0, eps)[:3]
                for group in x.split(size)
            ),
            strict=True,
        )
        return torch.cat(outputs), torch.stack(means), torch.stack(inverse_stds)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, outputs: tuple) -> None:
        x, weight, _, ctx.eps, ctx.size = inputs
        ctx.save_for_backward(x, weight, outputs[1], outputs[2])
        ctx.mark_non_differentiable(outputs[1], outputs[2])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None, _means: None, _inverse_stds: None) -> tuple:
        if grad is None:
            return None, None, None, None, None
        x, weight, means, inverse_stds = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:3])
        groups = zip(grad.split(ctx.size), x.split(ctx.size), means, inverse_stds, strict=True)
        if torch.is_grad_enabled():  # a graph of the backward is wanted: each group's, differentiable
            parts = [_BatchNormBackward.apply(g, xg, weight, m, r, ctx.eps, needs) for g, xg, m, r in groups]
        else:
            fused = torch.ops.aten.native_batch_norm_backward
            parts = [fused(g, xg, weight, None, None, m, r, True, ctx.eps, needs) for g, xg, m, r in groups]
        grad_x = torch.cat([part[0] for part in parts]) if needs[0] else None
        grad_weight = torch.stack([part[1] for part in parts]).sum(0) if needs[1] else None
        grad_bias = torch.stack([part[2] for part in parts]).sum(0) if needs[2] else None
        return grad_x, grad_weight, grad_bias, None, None


class _BatchNormBackward(torch.autograd.Function):
    """`_BatchNorm`'s backward by the fused kernel, (grad_x, grad_weight, grad_bias), differentiable
    in the output's gradient g, x and the weight by the closed form below: batch norm's double
    backward, which a second-order meta-gradient takes at every inner step. It makes five
    per-channel means and a few fused multiply-adds, where torch's own double backward runs several
    times as many operations (on the CPU it took over a third of MAML's eager meta-step)."""

    @staticmethod
    def forward(
        grad: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        mean: torch.Tensor,
        inverse_std: torch.Tensor,
        eps: float,
        needs: list[bool],
    ) -> tuple:
        return tuple(
            torch.ops.aten.native_batch_norm_backward(
                grad, x, weight, None, None, mean, inverse_std, True, eps, needs
            )
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, outputs: tuple) -> None:
        grad, x, weight, mean, inverse_std, _, _ = inputs
        ctx.save_for_backward(grad, x, weight, mean, inverse_std)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, *upstream: torch.Tensor | None) -> tuple:
        needs = tuple(ctx.needs_input_grad[:3])
        return (*double_backward(*ctx.saved_tensors, *upstream, needs), None, None, None, None)


def double_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    inverse_std: torch.Tensor,
    a: torch.Tensor | None,
    c: torch.Tensor | None,
    b: torch.Tensor | None,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """`_BatchNormBackward`'s backward (d/dg, d/dx, d/dweight where `needs` says), a function of
    tensors alone (which a compiler could fuse: benchmarks/ablation.py times that).

    With x̂ = (x - mean)·r (r = 1/std), P(v) = v - mean(v) - x̂·mean(x̂v) per channel, and upstream
    gradients a (of grad_x), c (of grad_weight) and b (of grad_bias):
    d/dg = weight·r·P(a) + c·x̂ + b; d/dweight = r·sum(a·P(g));
    d/dx = r·(c·P(g) - weight·r·(x̂·(cov(a, g) - mean(ax̂)·mean(gx̂)) + mean(ax̂)·P(g) + mean(gx̂)·P(a))),
    written below as per-channel coefficients of g, a, x̂ and 1."""
    dtype = torch.promote_types(x.dtype, weight.dtype)  # x may be bf16 under autocast
    dims = [0, *range(2, x.ndim)]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    count = x.numel() // x.shape[1]

    def channel(v: torch.Tensor) -> torch.Tensor:
        return v.to(dtype).view(shape)

    def average(v: torch.Tensor) -> torch.Tensor:
        return v.mean(dims, keepdim=True)

    # The per-channel arithmetic below is written in few operations (addcmul: one for a·b + c),
    # as each is a kernel launch on a GPU, in a step that makes hundreds of them.
    r = channel(inverse_std)
    g = grad.to(dtype)
    normalised = (x.to(dtype) - channel(mean)) * r  # x̂, centred first: exact where |mean| >> std
    g_mean, gx_mean = average(g), average(g * normalised)
    zero = torch.zeros((), dtype=dtype, device=x.device) if c is None or b is None else None
    c = zero if c is None else channel(c)
    coef_g = r * c  # d/dx = coef_1 + coef_x·x̂ + coef_g·g (+ coef_a·a below), per channel
    minus_rc = -coef_g
    coef_x, coef_1 = minus_rc * gx_mean, minus_rc * g_mean  # the c terms
    g_coef_x, g_coef_1 = c, zero if b is None else channel(b)  # d/dg = g_coef_1 + g_coef_x·x̂ (+ scale·a)
    d_weight = None
    minus_coef_a = None
    if a is not None:
        a = a.to(dtype)
        scale = channel(weight) * r
        rs = r * scale
        a_mean, ax_mean = average(a), average(a * normalised)
        covariance = average((a - a_mean) * g)  # centred: no cancellation where |mean(a)| >> std(a)
        coef_g = torch.addcmul(coef_g, rs, ax_mean, value=-1)
        coef_x = torch.addcmul(coef_x, rs, torch.addcmul(-covariance, gx_mean, ax_mean, value=3))
        coef_1 = torch.addcmul(coef_1, rs, torch.addcmul(ax_mean * g_mean, gx_mean, a_mean))
        minus_coef_a = rs * gx_mean
        g_coef_x = torch.addcmul(g_coef_x, scale, ax_mean, value=-1)
        g_coef_1 = torch.addcmul(g_coef_1, scale, a_mean, value=-1)
        if needs[2]:
            d_weight = torch.addcmul(covariance, ax_mean, gx_mean, value=-1) * (r * count)
            d_weight = d_weight.flatten().to(weight.dtype)
    d_g = None
    if needs[0]:  # two passes over the activations: one per term that is not constant
        d_g = torch.addcmul(g_coef_1, normalised, g_coef_x)
        if a is not None:
            d_g = torch.addcmul(d_g, a, scale)
    d_x = None
    if needs[1]:
        d_x = torch.addcmul(torch.addcmul(coef_1, normalised, coef_x), g, coef_g)
        if minus_coef_a is not None:
            d_x = torch.addcmul(d_x, a, minus_coef_a, value=-1)
        d_x = d_x.to(x.dtype)
    if d_g is not None:
        d_g = torch.broadcast_to(d_g, grad.shape).to(grad.dtype)
    return d_g, d_x, d_weight


def batch_norm_per_task(
    tasks: int, in_dims: tuple, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_BatchNorm` of every task at once, the vmap rule's work: x, weight and bias with their task
    dimension at `in_dims` (None: shared), tasks folded into channels ((T, B, C, ...) is one batch
    norm of (B, T*C, ...)); (output, mean, 1/std) with the tasks first."""
    x = tasks_first(x, in_dims[0], tasks)
    output, mean, inverse_std = _BatchNorm.apply(
        fold_channels(x),
        tasks_first(weight, in_dims[1], tasks).flatten(),
        tasks_first(bias, in_dims[2], tasks).flatten(),
        eps,
    )
    return unfold_channels(output, tasks), mean.view(tasks, -1), inverse_std.view(tasks, -1)


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Batch norm of x (B, C, ...) with its own statistics: torch's fused kernel, right under vmap and
    to second order (see the module's docstring)."""
    return _BatchNorm.apply(x, weight, bias, eps)[0]


def with_context(
    network: Callable[..., torch.Tensor], x: torch.Tensor, context: torch.Tensor | None, **kwargs
) -> torch.Tensor:
    """`network(x)`; with `context` images (non-transductive), x normalised with the context's
    statistics alone: the network runs on [context; x] with `context_size` and x's rows are kept."""
    if context is None:
        return network(x, **kwargs)
    return network(torch.cat([context, x]), context_size=context.shape[0], **kwargs)[context.shape[0] :]


def replace_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` whose torch BatchNorm layers are TaskBatchNorm with the same scale and shift.

    torch's batch norm updates running statistics in place, which torch.func cannot transform
    (fewsight then falls back to a slower loop over tasks), and its fused kernel gave wrong
    second-order meta-gradients under vmap on a GPU. The copy normalises every batch with its own
    statistics, as MAML does. Running statistics are dropped.
    """
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                like = child.weight if child.affine else child.running_mean
                replacement = TaskBatchNorm(child.num_features, child.eps)
                if like is not None:
                    replacement.to(device=like.device, dtype=like.dtype)
                if child.affine:
                    replacement.load_state_dict({"weight": child.weight, "bias": child.bias})
                setattr(module, name, replacement)
    return model
