import urllib.error
import zipfile

import pytest
import torch

from fewsight.data import load_omniglot
from fewsight.data.omniglot import load_characters, split_characters
from fewsight.errors import FewsightError


def test_archives_decode_to_every_character(omniglot_train):
    characters = load_characters()
    assert characters.images.shape == (1623, 20, 28, 28)
    assert characters.images.dtype == torch.uint8
    assert int(characters.background.sum()) == 964
    # Ink is bright on a dark background: most pixels are background.
    assert characters.images.float().mean() < 60


def test_second_load_reads_the_cache(omniglot_train, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("the archives were decoded again")

    monkeypatch.setattr("fewsight.data.omniglot._decode_archive", no_decoding)
    assert load_characters().images.shape[0] == 1623


@pytest.mark.parametrize(
    ("protocol", "sizes"),
    [
        ("maml", {"train": 1100, "val": 100, "test": 423, "trainval": 1200}),
        ("lake", {"train": 864, "val": 100, "test": 659, "trainval": 964}),
    ],
)
def test_splits_are_disjoint_and_sized(omniglot_train, protocol, sizes):
    characters = load_characters()
    splits = split_characters(characters.names, characters.background, protocol)
    assert {name: len(split) for name, split in splits.items()} == sizes
    assert not set(splits["train"]) & set(splits["test"])
    assert not set(splits["val"]) & set(splits["test"])
    assert not set(splits["train"]) & set(splits["val"])
    if protocol == "lake":
        assert all(characters.background[i] for i in splits["trainval"])
        assert not any(characters.background[i] for i in splits["test"])


def test_maml_protocol_adds_rotations_as_classes(omniglot_train):
    assert omniglot_train.num_classes == 4 * 1100
    assert omniglot_train.images_per_class().eq(20).all()
    first = omniglot_train.images[omniglot_train.labels == 0]
    quarter = omniglot_train.images[omniglot_train.labels == 1]
    assert torch.equal(torch.rot90(first, 1, dims=(-2, -1)), quarter)


def test_missing_archives_offline_name_the_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.setenv("FEWSIGHT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FewsightError, match=r"images_background\.zip.*images_evaluation\.zip"):
        load_omniglot("train", root=tmp_path)


def test_wrong_archive_is_reported_by_name(tmp_path, monkeypatch):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        with zipfile.ZipFile(folder / name, "w") as archive:
            archive.writestr("images_background/A/character01/0001_01.png", b"not a png")
    monkeypatch.setenv("FEWSIGHT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FewsightError, match=r"images_background\.zip holds 1 characters"):
        load_omniglot("train", root=tmp_path)
    (folder / "images_background.zip").write_bytes(b"truncated")
    with pytest.raises(FewsightError, match="not a readable zip"):
        load_omniglot("train", root=tmp_path)
