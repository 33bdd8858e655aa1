"""Data augmentation on the device for a whole batch at once: random resized crop and horizontal flip
(one affine resampling per image, by affine_grid + grid_sample), then colour jitter. No loop over
images; every random draw comes from the generator passed in, so a seed fixes the result."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewsight.data.episodes import TaskBatch

GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class Augment:
    """Settings of `augment`; the defaults are torchvision's RandomResizedCrop and RFS's ColorJitter(0.4).

    scale: range of the crop's area as a fraction of the image; ratio: range of its aspect ratio;
    flip: probability of a horizontal flip; brightness, contrast, saturation: each factor is drawn
    uniformly from [1 - value, 1 + value].
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4


def _uniform(low: float, high: float, count: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, device=generator.device)


def _crop_and_flip(images: torch.Tensor, settings: Augment, generator: torch.Generator) -> torch.Tensor:
    """A random crop of each image, resized back to the image size (bilinear), flipped at random."""
    count = images.shape[0]
    area = _uniform(*settings.scale, count, generator)
    aspect = torch.exp(_uniform(math.log(settings.ratio[0]), math.log(settings.ratio[1]), count, generator))
    # Crop width and height as fractions of the image's; the centre keeps the crop inside the image.
    width = torch.sqrt(area * aspect).clamp(max=1)
    height = torch.sqrt(area / aspect).clamp(max=1)
    centre_x = (1 - width) * _uniform(-1, 1, count, generator)
    centre_y = (1 - height) * _uniform(-1, 1, count, generator)
    flip = torch.rand(count, generator=generator, device=generator.device) < settings.flip
    zero = torch.zeros_like(width)
    theta = torch.stack(
        [
            torch.stack([torch.where(flip, -width, width), zero, centre_x], -1),
            torch.stack([zero, height, centre_y], -1),
        ],
        1,
    )
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _jitter(images: torch.Tensor, settings: Augment, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, then saturation (colour images only), each by a random factor per image."""
    count = images.shape[0]

    def factor(amount: float) -> torch.Tensor:
        return _uniform(1 - amount, 1 + amount, count, generator).to(images.dtype).view(-1, 1, 1, 1)

    colour = images.shape[1] == 3
    images = (images * factor(settings.brightness)).clamp(0, 1)
    mean = (_grey(images) if colour else images).mean(dim=(1, 2, 3), keepdim=True)
    images = (mean + factor(settings.contrast) * (images - mean)).clamp(0, 1)
    if colour:
        grey = _grey(images)
        images = (grey + factor(settings.saturation) * (images - grey)).clamp(0, 1)
    return images


def _grey(images: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) of RGB images (weights as Python numbers: no host-to-device copy)."""
    return sum(weight * images[:, index : index + 1] for index, weight in enumerate(GREY))


def augment(
    images: torch.Tensor, generator: torch.Generator, settings: Augment | None = None
) -> torch.Tensor:
    """Randomly augmented images (B, C, H, W) in [0, 1], same shape; `generator` lives on their device."""
    settings = settings or Augment()
    images = _crop_and_flip(images, settings, generator)
    if settings.brightness or settings.contrast or settings.saturation:
        images = _jitter(images, settings, generator)
    return images


def augment_tasks(batch: TaskBatch, generator: torch.Generator, settings: Augment | None = None) -> TaskBatch:
    """A meta-batch whose support and query images are augmented (labels unchanged)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        return augment(x.flatten(0, 1), generator, settings).view_as(x)

    return TaskBatch(
        apply(batch.support_x), batch.support_y, apply(batch.query_x), batch.query_y, batch.classes
    )
