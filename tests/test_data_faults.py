"""Faults in data files: images over PIL's pixel limit or undecodable, damaged and unwritable
decoded caches, and messages that name the data root really used."""

import errno
import hashlib
import io
import os
import re
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from fewsight.cli import main
from fewsight.data import load_miniimagenet, load_omniglot
from fewsight.data.folder import load_image_files
from fewsight.data.roots import download
from fewsight.errors import FewsightError
from tests.conftest import SHARED_DATA
from tests.faults import bomb_png, full_disk_save

MINI = SHARED_DATA / "miniimagenet-sample"
CLASSES = ["class0", "class1", "class2"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A cache folder of the test's own, so every test decodes afresh."""
    monkeypatch.setenv("FEWSIGHT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def image_folder(root: Path, classes: int = 3, per_class: int = 2) -> Path:
    """A folder data set of small grey PNGs, one subfolder per class."""
    source = root / "images"
    for c in range(classes):
        (source / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (40, 30), 10 * c + i).save(source / f"class{c}" / f"{i}.png")
    return source


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_IMAGES = pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            bomb_png(20000, 20000),
            r"is 20000x20000 pixels \(400 MP\), over the 89.5 MP limit for decoding: "
            r"resize it, for example to 2048x2048 pixels",
        ),
        (bomb_png(10000, 5000), None),  # under the limit: decoded
        # PIL itself only warns between the limit and twice it, and then decodes all 108 MP.
        (
            bomb_png(12000, 9000),
            r"is 12000x9000 pixels \(108 MP\), over the 89.5 MP limit .* to 2048x1536 pixels",
        ),
        (b"", r"is empty \(0 bytes\), not an image; remove or replace it"),
        (png_bytes()[:70], r"is not a readable image \(.*\); remove or replace it"),
        (b"Dear diary, ...", r"is not a readable image \(.*\); remove or replace it"),
    ],
    ids=["over-the-limit", "under-the-limit", "just-over-the-limit", "empty", "truncated", "not-an-image"],
)


@BAD_IMAGES
@pytest.mark.parametrize("kind", ["folder", "csv"])
def test_bad_images_in_a_folder_or_csv_data_set_are_named_in_one_line(tmp_path, kind, content, message):
    source = image_folder(tmp_path)
    bad = source / "class1" / "photo.png"
    bad.write_bytes(content)
    if kind == "csv":
        rows = [f"{f.relative_to(tmp_path)},{f.parent.name}" for f in sorted(source.glob("*/*.png"))]
        source = tmp_path / "images.csv"
        source.write_text("file,label\n" + "\n".join(rows) + "\n")
    if message is None:
        assert load_image_files(source, CLASSES, 28, 1, progress=False).images.shape == (7, 1, 28, 28)
        return
    with pytest.raises(FewsightError, match=re.escape(str(bad)) + " " + message) as error:
        load_image_files(source, CLASSES, 28, 1, progress=False)
    assert "\n" not in str(error.value)


@BAD_IMAGES
@pytest.mark.parametrize("where", ["query", "support"])
def test_bad_images_given_to_predict_are_named_in_one_line(tmp_path, capsys, where, content, message):
    support = image_folder(tmp_path)
    query = tmp_path / "photo.png"
    query.write_bytes(png_bytes())
    bad = query if where == "query" else support / "class1" / "photo.png"
    bad.write_bytes(content)
    status = main(["predict", "omniglot", "--support", str(support), "--query", str(query)])
    err = capsys.readouterr().err
    if message is None:
        assert status == 0, err
        return
    assert status == 2
    assert re.fullmatch(r"fewsight: error: " + re.escape(str(bad)) + " " + message + r"\n", err), err


def flip_a_byte_of(images: torch.Tensor, cache: Path) -> None:
    """Change one byte of the images in the cache file, as a bad disk sector could."""
    data = bytearray(cache.read_bytes())
    start = bytes(data).index(images.numpy().tobytes())
    data[start + images.numel() // 2] ^= 0xFF
    cache.write_bytes(bytes(data))


DAMAGES = pytest.mark.parametrize(
    "damage",
    [
        lambda images, cache: cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2]),
        lambda images, cache: cache.write_bytes(b""),
        lambda images, cache: torch.save({"images": images}, cache),
        flip_a_byte_of,
    ],
    ids=["truncated", "empty", "not-a-fewsight-cache", "a-flipped-byte"],
)


@DAMAGES
def test_a_damaged_folder_cache_is_rebuilt_with_a_warning(tmp_path, own_cache, damage):
    source = image_folder(tmp_path)
    first = load_image_files(source, CLASSES, 28, 1, progress=False)
    (cache,) = own_cache.glob("folder-*.pt")
    damage(first.images, cache)
    with pytest.warns(UserWarning, match=rf"the decoded cache {re.escape(str(cache))} is damaged \(.+\); "):
        again = load_image_files(source, CLASSES, 28, 1, progress=False)
    assert torch.equal(again.images, first.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: read again without a word
        assert torch.equal(load_image_files(source, CLASSES, 28, 1, progress=False).images, first.images)
    assert not list(own_cache.glob("*.part"))


@pytest.mark.skipif(not MINI.is_dir(), reason="../shared/data/miniimagenet-sample is not here")
@DAMAGES
def test_a_damaged_miniimagenet_cache_is_rebuilt_with_a_warning(own_cache, damage):
    first = load_miniimagenet("val", root=MINI, progress=False)
    (cache,) = own_cache.glob("miniimagenet-val-*.pt")
    damage(first.images, cache)
    with pytest.warns(UserWarning, match=rf"the decoded cache {re.escape(str(cache))} is damaged"):
        assert torch.equal(load_miniimagenet("val", root=MINI, progress=False).images, first.images)


def read_only(monkeypatch, cache: Path) -> None:
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", refuse)


def not_a_folder(monkeypatch, cache: Path) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    (cache.parent / "a-file").write_text("")
    monkeypatch.setenv("FEWSIGHT_CACHE", str(cache.parent / "a-file" / "cache"))


UNWRITABLE = pytest.mark.parametrize(
    ("make_unwritable", "message"),
    [
        (
            lambda monkeypatch, cache: monkeypatch.setattr(torch, "save", full_disk_save),
            r"the disk is full \(No space left on device\); free some space there, or set "
            "FEWSIGHT_CACHE to a folder on a disk with room",
        ),
        (
            read_only,
            r"\(the folder is not writable: Read-only file system\); set FEWSIGHT_CACHE to a writable",
        ),
        (
            not_a_folder,
            r"\(part of that path is a file, not a folder: .*\); set FEWSIGHT_CACHE to a writable folder",
        ),
    ],
    ids=["full-disk", "read-only", "not-a-folder"],
)


@UNWRITABLE
def test_an_unwritable_cache_folder_still_works_with_a_warning(
    tmp_path, monkeypatch, own_cache, make_unwritable, message
):
    source = image_folder(tmp_path)
    expected = load_image_files(source, CLASSES, 28, 1, progress=False).images
    for cache in own_cache.iterdir():
        cache.unlink()
    make_unwritable(monkeypatch, own_cache)
    for _ in range(2):  # and again: nothing was left behind that could get in the way
        with pytest.warns(
            UserWarning, match=r"could not write the decoded cache \S+folder-[\w-]+\.pt.? "
        ) as caught:
            assert torch.equal(load_image_files(source, CLASSES, 28, 1, progress=False).images, expected)
        (warning,) = [w for w in caught if "could not write" in str(w.message)]
        assert re.search(message, str(warning.message)), warning.message
        assert "this run carries on with the images decoded in memory" in str(warning.message)
    assert not list(tmp_path.rglob("*.part"))
    assert not list(own_cache.glob("*.pt")) if own_cache.is_dir() else True


def test_training_with_an_unwritable_cache_folder_warns_in_one_line(tmp_path, monkeypatch, capsys):
    source = image_folder(tmp_path, classes=20, per_class=3)
    not_a_folder(monkeypatch, tmp_path / "cache")
    args = ["--ways", "3", "--shots", "1", "--queries", "2", "--meta-batch", "2", "--steps", "2"]
    args += ["--val-every", "2", "--val-episodes", "2", "--image-size", "28", "--quiet", "--device", "cpu"]
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(source), "--algorithm", "protonet", *args, "--out", str(run)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines, "no warning"
    for line in lines:
        assert re.fullmatch(
            r"fewsight: warning: could not write the decoded cache \S+\.pt \(part of that path is a "
            r"file, not a folder: [^)]+\); set "
            r"FEWSIGHT_CACHE to a writable folder; this run carries on with the images decoded in memory, "
            r"and the next one decodes them again",
            line,
        ), line
    assert not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            "full-disk",
            r"the disk is full \(No space left on device\); free some space there, or set FEWSIGHT_CACHE",
        ),
        (
            "not-a-folder",
            r"\(part of that path is a file, not a folder: File exists\); set FEWSIGHT_CACHE to a writable",
        ),
    ],
)
def test_a_download_that_cannot_be_written_names_the_file_and_the_fix(tmp_path, monkeypatch, fault, message):
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: io.BytesIO(b"an archive"))
    target = tmp_path / "data" / "archive.zip"
    if fault == "full-disk":

        def full(descriptor):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full)
    else:
        (tmp_path / "data").write_text("")
    with pytest.raises(
        FewsightError, match=rf"could not write the download {re.escape(str(target))}.? {message}"
    ):
        download("https://example.org/archive.zip", target, hashlib.md5(b"an archive").hexdigest())
    assert not list(tmp_path.rglob("*.part"))


def offline(*args, **kwargs):
    raise urllib.error.URLError("no network")


@pytest.mark.parametrize(
    "setting", ["FEWSIGHT_CACHE", "XDG_CACHE_HOME", "HOME", "FEWSIGHT_DATA", "--data-root"]
)
def test_missing_data_names_the_data_root_really_used(tmp_path, monkeypatch, setting):
    monkeypatch.setattr("urllib.request.urlopen", offline)
    for name in ("FEWSIGHT_DATA", "FEWSIGHT_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    flag = None
    root, origin = {
        "FEWSIGHT_CACHE": (tmp_path / "cache" / "data", r"the default \$FEWSIGHT_CACHE/data, as neither"),
        "XDG_CACHE_HOME": (
            tmp_path / "xdg" / "fewsight" / "data",
            r"the default \$XDG_CACHE_HOME/fewsight/data",
        ),
        "HOME": (tmp_path / "home" / ".cache" / "fewsight" / "data", "the default ~/.cache/fewsight/data"),
        "FEWSIGHT_DATA": (tmp_path / "data", "given by FEWSIGHT_DATA"),
        "--data-root": (tmp_path / "relative", "given by --data-root"),
    }[setting]
    if setting == "FEWSIGHT_CACHE":
        monkeypatch.setenv(setting, str(tmp_path / "cache"))
    elif setting == "XDG_CACHE_HOME":
        monkeypatch.setenv(setting, str(tmp_path / "xdg"))
    elif setting == "HOME":
        monkeypatch.setenv(setting, str(tmp_path / "home"))
    elif setting == "FEWSIGHT_DATA":
        monkeypatch.setenv(setting, str(tmp_path / "data"))
    else:
        flag = "relative"
    where = rf"{re.escape(str(root))}, {origin}"
    with pytest.raises(
        FewsightError, match=rf"missing .* in {re.escape(str(root / 'omniglot'))} \(data root {where}"
    ):
        load_omniglot("train", root=flag)
    with pytest.raises(
        FewsightError, match=rf"no miniImageNet in {re.escape(str(root / 'miniimagenet'))} .*\({where}"
    ):
        load_miniimagenet("train", root=flag)
