"""miniImageNet in the users' layout, on the 1,000-image sample in ../shared/data."""

import shutil

import pytest
import torch

from fewsight.cli import main
from fewsight.data import EpisodeSampler, load_miniimagenet
from fewsight.errors import FewsightError
from tests.conftest import SHARED_DATA

SAMPLE = SHARED_DATA / "miniimagenet-sample"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data/miniimagenet-sample is not here")


def test_splits_decode_to_rgb_tensors():
    sizes = {"train": 64, "val": 16, "test": 20}
    for split, classes in sizes.items():
        data = load_miniimagenet(split, root=SAMPLE)
        assert data.num_classes == classes
        assert data.images.shape == (10 * classes, 3, 84, 84) and data.images.dtype == torch.uint8
        assert data.images_per_class().eq(10).all()
    assert data.class_names[0].startswith("n")
    batch = EpisodeSampler(data, 5, 1, 4).sample(2, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (2, 5, 3, 84, 84)


def test_missing_images_are_named(tmp_path):
    copy = tmp_path / "miniimagenet"
    shutil.copytree(SAMPLE, copy)
    victim = sorted((copy / "images").iterdir())[0]
    victim.unlink()
    with pytest.raises(FewsightError, match=f"missing from .*first: {victim.name}"):
        load_miniimagenet("train", root=tmp_path)
    with pytest.raises(FewsightError, match="no miniImageNet"):
        load_miniimagenet("train", root=tmp_path / "nothing")


def test_a_few_training_steps_from_the_cli(tmp_path):
    """20-way ProtoNet, as the paper trains it: validation falls back to the 16 classes val has."""
    run = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "miniimagenet",
        "--data-root",
        str(SAMPLE),
        "--algorithm",
        "protonet",
        "--ways",
        "20",
        "--shots",
        "1",
        "--queries",
        "1",
        "--meta-batch",
        "1",
        "--steps",
        "2",
        "--val-every",
        "2",
        "--val-episodes",
        "2",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        str(run),
    ]
    assert main(args) == 0
    assert "val_accuracy" in (run / "metrics.jsonl").read_text().splitlines()[-1]
    assert main(["eval", str(run), "--data-root", str(SAMPLE), "--episodes", "2", "--quiet"]) == 0


def test_quiet_hides_the_decoding_progress_bar_too(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEWSIGHT_CACHE", str(tmp_path / "cache"))  # decoded afresh
    flags = ["--ways", "5", "--shots", "1", "--queries", "4", "--episodes", "2", "--device", "cpu"]
    command = ["eval", "miniimagenet", "--data-root", str(SAMPLE), *flags]
    assert main([*command, "--quiet"]) == 0
    assert "decoding" not in capsys.readouterr().err
    monkeypatch.setenv("FEWSIGHT_CACHE", str(tmp_path / "another"))
    assert main(command) == 0
    assert "decoding miniImageNet test" in capsys.readouterr().err
