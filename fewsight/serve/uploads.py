"""Uploaded images, read safely: size and count limits, the file's kind checked from its first bytes
and its pixel count from its header before anything is decoded, and nothing written to disk."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
from PIL import Image
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from fewsight.data.decode import decode_image
from fewsight.errors import FewsightError

MB = 1024 * 1024
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}


@dataclass(frozen=True)
class Limits:
    """What one request and the whole session may hold."""

    image_bytes: int = 10 * MB
    request_bytes: int = 50 * MB
    json_bytes: int = 64 * 1024
    files_per_request: int = 64
    image_pixels: int = 40_000_000
    images_per_class: int = 50
    classes: int = 50


class UploadError(FewsightError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, whose files never roll over to a temporary file on disk: the
    whole request is read into memory first, within `Limits.request_bytes`, which is below this."""

    spool_max_size = 1 << 62


async def read_files(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every file of a multipart/form-data request, in order."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError("send the images as multipart/form-data, one or more fields named files", 415)
    body = await request.body()  # within Limits.request_bytes: guards.BodyLimit refuses more

    async def stream():
        yield body

    parser = _InMemoryParser(request.headers, stream(), max_files=limits.files_per_request, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise UploadError(f"{error.message} (at most {limits.files_per_request} files a request)") from error
    files = [(_display_name(f.filename), await f.read()) for _, f in form.multi_items() if hasattr(f, "read")]
    if not files:
        raise UploadError("the request holds no files; send one or more images in fields named files")
    return files


def size_limit(size: int) -> str:
    """A limit in bytes, exactly, with its megabytes when it is a whole number of them."""
    return f"{size:,} bytes ({size // MB} MB)" if size >= MB and size % MB == 0 else f"{size:,} bytes"


def _display_name(filename: str | None) -> str:
    """A file name fit to show: no folders, at most 100 characters."""
    name = PurePath((filename or "").replace("\\", "/")).name or "unnamed"
    return name if len(name) <= 100 else name[:97] + "..."


def image_kind(data: bytes) -> str | None:
    """The image format that the first bytes announce (PNG, JPEG, GIF, BMP, WebP), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in SIGNATURES.items() if data.startswith(magic)), None)


def decode_upload(name: str, data: bytes, limits: Limits, image_size: int, channels: int) -> np.ndarray:
    """One uploaded image as uint8 (channels, size, size), after checking its size, kind and pixel
    count; a FewsightError naming the file otherwise."""
    if not data:
        raise UploadError(f"{name} is empty (0 bytes); remove it, or choose the image it should be")
    if len(data) > limits.image_bytes:
        raise UploadError(
            f"{name} is {len(data):,} bytes, over the limit of {size_limit(limits.image_bytes)} an image; "
            "shrink it or choose another",
            413,
        )
    kind = image_kind(data)
    if kind is None:
        raise UploadError(f"{name} is not an image (PNG, JPEG, GIF, BMP or WebP); remove it", 415)
    try:
        with Image.open(io.BytesIO(data), formats=[kind.upper()]) as image:  # reads the header only
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UploadError(f"{name} is a damaged {kind} file; remove or replace it") from error
    if width * height > limits.image_pixels:
        raise UploadError(
            f"{name} is {width}x{height} pixels, over the limit of {limits.image_pixels:,} pixels an image; "
            "shrink it or choose another",
            413,
        )
    return decode_image(io.BytesIO(data), image_size, channels, name)
