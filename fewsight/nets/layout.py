"""The memory layout a batch of images is convolved in: channels-last, in which cuDNN's convolutions
(tensor cores) run fastest on a GPU and would otherwise convert every input and output, and in which
a ResNet-12's pass also ran 1.2-1.8x faster on a 2-core CPU (benchmarks/stage_step.py,
docs/BENCHMARKS.md). Values are the same in either layout."""

from __future__ import annotations

import torch


def for_convolution(images: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """`images` (B, C, H, W) channels-last (with channels_last=False: as they come)."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images
