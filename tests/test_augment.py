"""Batched augmentation on the device: seeded, in range, flips that flip, identity when switched off."""

import pytest
import torch

from fewsight.data import EpisodeSampler, load_miniimagenet
from fewsight.data.augment import Augment, augment, augment_tasks
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
