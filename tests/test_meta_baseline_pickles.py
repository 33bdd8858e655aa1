"""benchmarks/meta_baseline_pickles.py: the images fewsight reads, in the pickle layout Meta-Baseline's
code loads, on the real miniImageNet sample."""

import pickle

import numpy as np
import pytest

from benchmarks.meta_baseline_pickles import FILE, write_pickles
from fewsight.data.miniimagenet import load_miniimagenet
from tests.conftest import SHARED_DATA

SAMPLE = SHARED_DATA / "miniimagenet-sample"


@pytest.fixture(scope="module")
def pickles(tmp_path_factory):
    if not SAMPLE.is_dir():
        pytest.skip("../shared/data/miniimagenet-sample is not here")
    out = tmp_path_factory.mktemp("mini-imagenet")
    write_pickles(SAMPLE, out, monitor=3, progress=False)

    def load(split: str) -> dict:
        with (out / FILE.format(split)).open("rb") as file:
            return pickle.load(file, encoding="latin1")  # as the reference code loads them

    return load


@pytest.mark.parametrize(
    ("tag", "split", "first"), [("train_phase_train", "train", 0), ("val", "val", 64), ("test", "test", 80)]
)
def test_each_split_holds_fewsights_pixels_and_the_reference_numbering(pickles, tag, split, first):
    pack, images = pickles(tag), load_miniimagenet(split, 84, SAMPLE, progress=False)
    assert pack["data"].dtype == np.uint8 and pack["data"].shape == (len(images.labels), 84, 84, 3)
    np.testing.assert_array_equal(pack["data"], images.images.permute(0, 2, 3, 1).numpy())
    assert pack["labels"] == (images.labels + first).tolist()
    assert min(pack["labels"]) == first and len(set(pack["labels"])) == images.num_classes
    assert sorted(pack["catname2label"].values()) == list(range(first, first + images.num_classes))


def test_the_monitor_split_is_the_first_images_of_each_training_class(pickles):
    train, monitor = pickles("train_phase_train"), pickles("train_phase_val")
    labels = np.array(train["labels"])
    expected = np.concatenate([np.flatnonzero(labels == label)[:3] for label in range(64)])
    np.testing.assert_array_equal(monitor["data"], train["data"][np.sort(expected)])
    assert monitor["labels"] == labels[np.sort(expected)].tolist()
