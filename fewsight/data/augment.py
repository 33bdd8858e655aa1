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


TRIES = 10  # torchvision's RandomResizedCrop draws up to 10 crops before it falls back


def crop_sizes(
    count: int, height: int, width: int, settings: Augment, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop widths and heights (fractions of the image's) drawn as torchvision's RandomResizedCrop
    draws them: an area and a log-uniform aspect ratio, rounded to whole pixels, redrawn (up to 10
    times) while the crop does not fit; then the whole image, narrowed to the nearest allowed ratio.
    Redrawing, not clamping, keeps near-whole crops as rare as in the papers' code. No host syncs."""
    low, high = math.log(settings.ratio[0]), math.log(settings.ratio[1])
    area = _uniform(*settings.scale, count * TRIES, generator).view(count, TRIES) * (height * width)
    aspect = torch.exp(_uniform(low, high, count * TRIES, generator)).view(count, TRIES)
    crop_w = torch.sqrt(area * aspect).round()
    crop_h = torch.sqrt(area / aspect).round()
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits (0 if none does)
    crop_w, crop_h = crop_w.gather(1, first).squeeze(1), crop_h.gather(1, first).squeeze(1)
    image_aspect = width / height
    fallback_w = float(width) if image_aspect <= settings.ratio[1] else round(height * settings.ratio[1])
    fallback_h = float(height) if image_aspect >= settings.ratio[0] else round(width / settings.ratio[0])
    found = fits.any(1)
    crop_w, crop_h = torch.where(found, crop_w, fallback_w), torch.where(found, crop_h, fallback_h)
    return crop_w / width, crop_h / height


def _crop_and_flip(
    images: torch.Tensor, settings: Augment, generator: torch.Generator, size: int | None = None
) -> torch.Tensor:
    """A random crop of each image, resized (bilinear) to `size` square (None: the image's own size),
    flipped at random."""
    count = images.shape[0]
    width, height = crop_sizes(count, images.shape[-2], images.shape[-1], settings, generator)
    # The crop's centre, uniform over the positions that keep the crop inside the image.
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
    shape = list(images.shape) if size is None else [*images.shape[:2], size, size]
    grid = F.affine_grid(theta.to(images.dtype), shape, align_corners=False)
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
    images: torch.Tensor, generator: torch.Generator, settings: Augment | None = None, size: int | None = None
) -> torch.Tensor:
    """Randomly augmented images (B, C, H, W) in [0, 1], of the same shape, or `size` pixels square
    (crops of larger images, as torchvision's RandomResizedCrop(size)); `generator` lives on their device."""
    settings = settings or Augment()
    images = _crop_and_flip(images, settings, generator, size)
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
