"""A labelled image set held as one tensor: the form every episode sampler reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fewsight.errors import FewsightError


@dataclass
class LabelledImages:
    """Images (M, C, H, W) with integer class labels (M,) in 0..len(class_names)-1.

    uint8 images are scaled to [0, 1] when sampled; floating-point images are used as they are.
    """

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

    def concat(self, other: LabelledImages) -> LabelledImages:
        """Both sets' images, with `other`'s classes numbered after this one's."""
        labels = torch.cat([self.labels, other.labels + self.num_classes])
        return LabelledImages(
            torch.cat([self.images, other.images]), labels, self.class_names + other.class_names
        )

    @classmethod
    def from_tensors(cls, images: torch.Tensor, labels: torch.Tensor) -> LabelledImages:
        """From images (M, C, H, W) and any integer labels (M,), renumbered 0..classes-1."""
        values, labels = torch.unique(torch.as_tensor(labels), return_inverse=True)
        return cls(images, labels, [str(v) for v in values.tolist()])

    @classmethod
    def from_dataset(cls, dataset: Sequence[tuple[Any, int]]) -> LabelledImages:
        """From any indexable data set of (image, integer label) pairs, such as torchvision's
        ImageFolder: images are PIL images or (C, H, W) tensors, all of one size."""
        images, labels = [], []
        for index in range(len(dataset)):
            image, label = dataset[index]
            if not isinstance(image, torch.Tensor):
                array = np.asarray(image)
                image = torch.from_numpy(array if array.ndim == 3 else array[..., None]).permute(2, 0, 1)
            images.append(image)
            labels.append(int(label))
        if len({tuple(image.shape) for image in images}) > 1:
            raise FewsightError("the data set's images differ in size; resize them to one size first")
        data = cls.from_tensors(torch.stack(images), torch.tensor(labels))
        names = getattr(dataset, "classes", None)
        if names is not None and len(names) == data.num_classes:
            data.class_names = [names[int(v)] for v in data.class_names]
        return data
