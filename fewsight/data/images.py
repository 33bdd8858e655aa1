"""A labelled image set held as one uint8 tensor: the form every episode sampler reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LabelledImages:
    """Images (M, C, H, W) uint8 with integer class labels (M,) in 0..len(class_names)-1."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.shape != self.images.shape[:1]:
            raise ValueError("images must be (M, C, H, W) and labels (M,)")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def images_per_class(self) -> torch.Tensor:
        """Count of images of each class, (num_classes,)."""
        return torch.bincount(self.labels, minlength=self.num_classes)
