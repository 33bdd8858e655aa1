"""Safe files: archives are read in memory, never extracted; bad archives and images are named."""

import hashlib
import io
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewsight.data import load_omniglot
from fewsight.data.omniglot import load_characters
from fewsight.data.roots import download
from fewsight.errors import FewsightError
from tests.conftest import SHARED_DATA
from tests.faults import bomb_png, full_disk_save

REAL = SHARED_DATA / "omniglot"
BACKGROUND = "images_background.zip"


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A data root holding links to the real archives, and a cache of the test's own."""
    if not REAL.is_dir():
        pytest.skip("../shared/data/omniglot is not here")
    (tmp_path / "data" / "omniglot").mkdir(parents=True)
    for name in (BACKGROUND, "images_evaluation.zip"):
        (tmp_path / "data" / "omniglot" / name).symlink_to(REAL / name)
    monkeypatch.setenv("FEWSIGHT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "data"


def replace_background(root: Path, data: bytes) -> Path:
    """Put `data` in place of the background archive of `root`."""
    path = root / "omniglot" / BACKGROUND
    path.unlink()
    path.write_bytes(data)
    return path


def first_drawing() -> str:
    """The member name of the first drawing decoded from the background archive."""
    with zipfile.ZipFile(REAL / BACKGROUND) as archive:
        return min(name for name in archive.namelist() if name.endswith(".png"))


def png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), 255).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "member",
    [
        "../evil.png",
        "images_background/Latin/../../../evil.png",
        "/tmp/evil.png",
        "..\\..\\evil.png",
        "C:/evil.png",
    ],
)
def test_member_escaping_its_folder_is_refused(root, member):
    path = replace_background(root, (REAL / BACKGROUND).read_bytes())
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(member, png(105))
    with pytest.raises(FewsightError, match="points outside the archive") as error:
        load_omniglot("train", root=root)
    assert BACKGROUND in str(error.value)
    assert not list(root.parent.rglob("evil.png"))  # nothing was extracted anywhere


def test_truncated_archive_is_reported_by_name(root):
    replace_background(root, (REAL / BACKGROUND).read_bytes()[: 4 << 20])
    with pytest.raises(FewsightError, match=rf"{BACKGROUND} is not a readable zip archive"):
        load_omniglot("train", root=root)


def test_damaged_member_is_reported_by_name(root):
    data = bytearray((REAL / BACKGROUND).read_bytes())
    with zipfile.ZipFile(REAL / BACKGROUND) as archive:
        info = archive.getinfo(first_drawing())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 10 : start + 30] = bytes(20)  # zeros in the middle of its compressed bytes
    replace_background(root, bytes(data))
    with pytest.raises(FewsightError, match=rf"{info.filename} is damaged"):
        load_omniglot("train", root=root)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a png", "is not a readable image"),
        (png(105)[:60], "is not a readable image"),
        (png(4000), "is 4000x4000 pixels, not a 105x105 drawing"),
        (b"", r"is empty \(0 bytes\), not an image; replace the archive with the canonical one"),
        (
            bomb_png(20000, 20000),
            r"is 20000x20000 pixels \(400 MP\), over the 89.5 MP limit for decoding: resize it, "
            "for example to 105x105 pixels",
        ),
    ],
    ids=["garbage", "truncated", "oversized", "empty", "over-the-pixel-limit"],
)
def test_corrupt_image_is_reported_by_name(root, content, message):
    member = first_drawing()
    path = replace_background(root, (REAL / BACKGROUND).read_bytes())
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as archive:
        archive.writestr(member, content)  # read after the original, so it replaces it
    character, file = member.split("/", 1)[1].rsplit("/", 1)
    with pytest.raises(FewsightError, match=rf"{BACKGROUND}: {character}/{file} {message}"):
        load_omniglot("train", root=root)


def test_damaged_cache_is_decoded_again(root, monkeypatch):
    def small_archive(path, image_size, progress=True):
        return [f"{path.stem}/character01"], np.zeros((1, 20, image_size, image_size), np.uint8)

    monkeypatch.setattr("fewsight.data.omniglot._decode_archive", small_archive)
    load_characters(root)
    (cached,) = (root.parent / "cache").glob("omniglot-*.pt")
    cached.write_bytes(cached.read_bytes()[:100])  # as a crash while it was written could leave it
    with pytest.warns(
        UserWarning, match=rf"the decoded cache {cached} is damaged .*decoding the images again"
    ):
        assert load_characters(root).images.shape == (2, 20, 28, 28)
    assert torch.load(cached, weights_only=True)["value"]["images"].shape == (2, 20, 28, 28)


def test_a_cache_that_cannot_be_written_keeps_the_characters_in_memory(root, monkeypatch):
    def small_archive(path, image_size, progress=True):
        return [f"{path.stem}/character01"], np.zeros((1, 20, image_size, image_size), np.uint8)

    monkeypatch.setattr("fewsight.data.omniglot._decode_archive", small_archive)
    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.warns(
        UserWarning, match=r"could not write the decoded cache \S+omniglot-[\w-]+\.pt: the disk is full"
    ):
        assert load_characters(root).images.shape == (2, 20, 28, 28)
    assert list((root.parent / "cache").iterdir()) == []  # no cache, and no part of one


def test_downloads_are_verified_by_checksum(tmp_path, monkeypatch):
    content = b"the canonical archive"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"tampered with"))
    target = tmp_path / "archive.zip"
    with pytest.raises(FewsightError, match="wrong checksum"):
        download("https://example.org/archive.zip", target, hashlib.md5(content).hexdigest())
    assert list(tmp_path.iterdir()) == []  # nothing kept, not even the partial file
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(content))
    download("https://example.org/archive.zip", target, hashlib.md5(content).hexdigest())
    assert target.read_bytes() == content
