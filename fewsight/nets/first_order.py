"""Layers that run torch's own functions where no second derivative is taken through them.

fewsight's convolution and batch norm are custom autograd Functions, so that MAML's second-order
meta-gradient stays fast and right under vmap. Training that differentiates only once (pre-training,
Meta-Baseline's stage) does not need that, and there each Function's Python costs host time: on a
GPU, pre-training's pass is bound by the host (docs/BENCHMARKS.md). Within `first_order(model)`, the
layers call `F.conv2d` and `F.batch_norm` instead, outside torch.func's transforms (under vmap they
keep their own rules). Values and first derivatives are the same; torch's functions are also right to
second order outside vmap, only slower there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from fewsight.nets.batchnorm import TaskBatchNorm
from fewsight.nets.conv import SameConv2d


@contextlib.contextmanager
def first_order(model: nn.Module) -> Iterator[nn.Module]:
    """Within it, every SameConv2d and TaskBatchNorm of `model` computes with torch's own functions
    outside torch.func's transforms; each layer's earlier setting comes back on leaving."""
    layers = [module for module in model.modules() if isinstance(module, SameConv2d | TaskBatchNorm)]
    before = [layer.first_order for layer in layers]
    for layer in layers:
        layer.first_order = True
    try:
        yield model
    finally:
        for layer, setting in zip(layers, before, strict=True):
            layer.first_order = setting
