"""Learner weights in 8 bits, for a model that ships inside the package (at most 12 MB a file): each
large weight tensor is kept as int8 with one float scale per output channel (symmetric, rounded to
nearest), a quarter of float32's size, so that Meta-Baseline's ResNet-12 (8.0M weights) ships in
8 MB. Small tensors (biases, batch-norm scales and shifts) stay as they are. Loading a checkpoint
turns quantised entries back into float32 tensors; other checkpoints pass through unchanged."""

from __future__ import annotations

import torch

SMALLEST = 4096  # tensors with fewer elements than this are kept as they are
# Kept as they are whatever their size: Reptile's Adam second moments (fewsight.algorithms.reptile),
# whose small entries would round to 0 and turn its inner steps into steps of inner_lr / epsilon.
KEPT_EXACT = ("second_moment_",)
Stored = torch.Tensor | dict[str, torch.Tensor]  # a tensor, or {"int8": values, "scale": per channel}


def quantise(state: dict[str, torch.Tensor]) -> dict[str, Stored]:
    """`state` with every floating-point tensor of 2 or more dimensions and SMALLEST or more elements
    (but KEPT_EXACT's) as {"int8": values, "scale": one float32 per output channel (dimension 0)}."""
    stored: dict[str, Stored] = {}
    for name, value in state.items():
        weight = not name.startswith(KEPT_EXACT)
        if weight and value.is_floating_point() and value.ndim >= 2 and value.numel() >= SMALLEST:
            rows = value.detach().float().flatten(1)
            scale = rows.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
            values = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
            stored[name] = {"int8": values.view(value.shape), "scale": scale}
        else:
            stored[name] = value
    return stored


def dequantise(stored: dict[str, Stored]) -> dict[str, torch.Tensor]:
    """The float32 state dict of `quantise`'s output (a state dict without quantised entries as it is)."""
    state = {}
    for name, value in stored.items():
        if isinstance(value, dict):
            values = value["int8"]
            value = values.float() * value["scale"].view(-1, *[1] * (values.ndim - 1))
        state[name] = value
    return state
