"""DropBlock (Ghiasi et al. 2018) as MetaOptNet and RFS use it: drop whole square blocks of a feature
map, batched, with no state, so that it runs under torch.vmap (with ``randomness="different"``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def drop_block(x: torch.Tensor, rate: float, block_size: int) -> torch.Tensor:
    """x (B, C, H, W) with blocks of block_size² zeroed so that about `rate` of the units are dropped,
    rescaled to keep the mean; blocks lie wholly inside the map (MetaOptNet's form). rate 0: x."""
    if rate <= 0:
        return x
    height, width = x.shape[-2:]
    size = min(block_size, height, width)
    valid = (height - size + 1) * (width - size + 1)
    gamma = rate / size**2 * height * width / valid  # seeds per valid position
    seeds = torch.rand(*x.shape[:-2], height - size + 1, width - size + 1, device=x.device) < gamma
    # Padding by size-1 then a size-wide max-pool grows each seed into the block it is the corner of.
    blocks = F.max_pool2d(F.pad(seeds.to(x.dtype), [size - 1] * 4), size, stride=1)
    keep = 1 - blocks
    return x * keep * (keep.numel() / keep.sum().clamp(min=1))
