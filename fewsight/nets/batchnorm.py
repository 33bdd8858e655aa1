"""Batch norm with statistics from the task's own batch: written out from mean and variance under
torch.func, torch's fused kernel elsewhere.

Why not always ``F.batch_norm``: under ``vmap(grad(...))`` its second-order meta-gradients are
wrong, 7e-2 (relative, float64) off the per-task reference on torch 2.11 / H100 and 0.18 (absolute)
on torch 2.13 / CPU, while the written-out form agrees to 1e-13 (batch norm's backward batching rule
is known to be wrong: pytorch/functorch#534).
Under plain autograd (the per-task loop, pre-training, prediction; not the ONNX tracer) the fused
kernel is used: it keeps fewer tensors for the backward pass, and a per-task MAML step holds 40%
less memory on the CPU. No running statistics are kept: every call normalises with the statistics of
the batch it is given (transductive, as in the MAML paper), or, with ``context_size``, with those of
the first ``context_size`` samples only (non-transductive: queries are normalised with the support
set's statistics, so each query is classified independently of the others).
`fewsight.nets.population` can instead fix statistics estimated over many images, as torch's running
statistics are (each sample then normalised on its own).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


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

    def forward(self, x: torch.Tensor, context_size: int | None = None) -> torch.Tensor:
        if self.population_mean is not None:  # each sample normalised on its own, as eval-mode torch
            return F.batch_norm(
                x, self.population_mean, self.population_var, self.weight, self.bias, False, 0.0, self.eps
            )
        if context_size is None and _plain_autograd():
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        context = x if context_size is None else x[:context_size]
        dims = [0, *range(2, x.ndim)]
        # One pass for both statistics and one fused multiply-add: fewer kernels in the inner loop,
        # whose forward, backward and double backward are mostly such small elementwise kernels.
        variance, mean = torch.var_mean(context, dim=dims, correction=0, keepdim=True)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = self.weight.view(shape) * torch.rsqrt(variance + self.eps)
        return torch.addcmul(self.bias.view(shape), x - mean, scale)


def _plain_autograd() -> bool:
    """True outside torch.func transforms and the ONNX tracer (which cannot export batch norm
    without running statistics): where the fused kernel is safe to use."""
    return not (torch._C._are_functorch_transforms_active() or torch.jit.is_tracing())


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
