"""Faults for the data tests: PNGs over PIL's pixel limit that are only a few KB on disk, and a
`torch.save` that runs out of disk space."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height black pixels: all of them decode, yet the file
    is tiny (20000x20000 is about 50 KB), as a decompression bomb is."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits of one row
    rows_per_block = max(1, (1 << 22) // len(row))
    compressor = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_per_block):
        parts.append(compressor.compress(row * min(rows_per_block, height - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def full_disk_save(obj: object, file: object, *args: object, **kwargs: object) -> None:
    """In place of `torch.save`: writes a few bytes of `file` (a path or an open file), then fails
    as a full disk does."""
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(open(file, "wb")) if isinstance(file, (str, os.PathLike)) else file
        handle.write(b"half a cache")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
