"""Batched augmentation on the device: seeded, in range, flips that flip, identity when switched off,
crops drawn as torchvision draws them."""

import math
import random

import pytest
import torch

from fewsight.data import EpisodeSampler, load_miniimagenet
from fewsight.data.augment import Augment, augment, augment_tasks, crop_sizes
from tests.conftest import SHARED_DATA

SAMPLE = SHARED_DATA / "miniimagenet-sample"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data/miniimagenet-sample is not here")
NOTHING = Augment(scale=(1, 1), ratio=(1, 1), flip=0, brightness=0, contrast=0, saturation=0)


@pytest.fixture(scope="module")
def images():
    return load_miniimagenet("val", root=SAMPLE).images[:24].float() / 255


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_seed_fixes_the_result(images):
    first, again, other = augment(images, seeded(3)), augment(images, seeded(3)), augment(images, seeded(4))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_shape_range_and_change(images):
    out = augment(images, seeded(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 0.05
    grey = images.mean(1, keepdim=True)  # one-channel images (Omniglot) take the same path
    assert augment(grey, seeded(0)).shape == grey.shape


def test_identity_when_every_part_is_off(images):
    torch.testing.assert_close(augment(images, seeded(0), NOTHING), images, rtol=0, atol=1e-5)


def test_flip_flips(images):
    flip = Augment(scale=(1, 1), ratio=(1, 1), flip=1.0, brightness=0, contrast=0, saturation=0)
    torch.testing.assert_close(augment(images, seeded(0), flip), images.flip(-1), rtol=0, atol=1e-5)


def test_crops_of_larger_images_come_out_at_the_size_asked(images):
    """augment(..., size): the whole image with nothing else is a bilinear resize; crops have the size."""
    whole = augment(images, seeded(0), NOTHING, size=72)
    resized = torch.nn.functional.interpolate(images, size=72, mode="bilinear", align_corners=False)
    torch.testing.assert_close(whole, resized, rtol=0, atol=1e-5)
    cropped = augment(images, seeded(0), size=72)
    assert cropped.shape == (*images.shape[:2], 72, 72) and cropped.min() >= 0 and cropped.max() <= 1
    assert torch.equal(augment(images, seeded(5), size=images.shape[-1]), augment(images, seeded(5)))


def test_a_crop_magnifies(images):
    half = Augment(scale=(0.25, 0.25), ratio=(1, 1), flip=0, brightness=0, contrast=0, saturation=0)
    out = augment(images, seeded(0), half)
    # A quarter of the area blown up to the whole image is smoother: smaller neighbour differences.
    assert out.diff(dim=-1).abs().mean() < 0.75 * images.diff(dim=-1).abs().mean()


def test_tasks_of_the_sample_keep_their_labels():
    sampler = EpisodeSampler(load_miniimagenet("train", root=SAMPLE), 5, 1, 3)
    batch = sampler.sample(2, sampler.generator(0))
    out = augment_tasks(batch, sampler.generator(1))
    assert out.support_x.shape == batch.support_x.shape and out.query_x.shape == batch.query_x.shape
    assert torch.equal(out.support_y, batch.support_y) and torch.equal(out.query_y, batch.query_y)
    assert not torch.allclose(out.query_x, batch.query_x)


def torchvision_crop(height: int, width: int, settings: Augment, rng: random.Random) -> tuple[float, float]:
    """RandomResizedCrop.get_params as torchvision documents it, one crop at a time (the reference)."""
    for _ in range(10):
        area = height * width * rng.uniform(*settings.scale)
        aspect = math.exp(rng.uniform(math.log(settings.ratio[0]), math.log(settings.ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return w / width, h / height
    return 1.0, 1.0  # a square image inside the ratio range: the whole image


def test_crops_are_drawn_as_torchvision_draws_them():
    """The same distribution as the reference (means and the share of near-whole crops, which
    clamping instead of redrawing would double), and every crop fits inside the image."""
    settings, count = Augment(), 40_000
    width, height = crop_sizes(count, 80, 80, settings, seeded(0))
    rng = random.Random(0)
    reference = torch.tensor([torchvision_crop(80, 80, settings, rng) for _ in range(count)])
    for ours, theirs in (
        (width, reference[:, 0]),
        (height, reference[:, 1]),
        (width * height, reference.prod(1)),
    ):
        assert abs(ours.mean() - theirs.mean()) < 4 * theirs.std() / math.sqrt(count)
    near_whole, expected = (width * height > 0.8).float().mean(), (reference.prod(1) > 0.8).float().mean()
    assert abs(near_whole - expected) < 0.01 and 0.08 < expected < 0.13
    assert (width > 0).all() and (width <= 1).all() and (height > 0).all() and (height <= 1).all()
    pixels = width * 80
    assert torch.equal(pixels, pixels.round())  # whole pixels, as torchvision's


def test_a_crop_that_never_fits_falls_back_as_torchvision():
    """Ratios of 2-3 at the whole area never fit a square image: the whole width, half the height."""
    wide = Augment(scale=(1, 1), ratio=(2, 3))
    width, height = crop_sizes(5, 80, 80, wide, seeded(0))
    assert torch.equal(width, torch.ones(5)) and torch.equal(height, torch.full((5,), 0.5))
