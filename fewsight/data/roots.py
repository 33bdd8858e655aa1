"""Where data sets and decoded caches live, and how files are written there.

The cache folder is ``$FEWSIGHT_CACHE``, else ``$XDG_CACHE_HOME/fewsight``, else
``~/.cache/fewsight``. The data root is the ``--data-root`` flag, else ``$FEWSIGHT_DATA``, else the
folder ``data`` inside the cache folder: so setting ``FEWSIGHT_CACHE`` alone moves the default data
root to ``$FEWSIGHT_CACHE/data`` too, and downloads land there.

Archives are read, never written beside: decoded tensors go to the cache folder, so a read-only data
root (a shared disk, CI) works. Files are written to a temporary file beside their target and renamed
over it, so a crash or a full disk never leaves half a file under the target's name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fewsight.errors import FewsightError

DATA_ENV = "FEWSIGHT_DATA"
CACHE_ENV = "FEWSIGHT_CACHE"
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}


def cache_dir() -> Path:
    """Folder for decoded tensors and downloads: $FEWSIGHT_CACHE, else $XDG_CACHE_HOME/fewsight,
    else ~/.cache/fewsight."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fewsight"


def data_root(flag: str | os.PathLike | None = None) -> Path:
    """The data root: the --data-root flag, else $FEWSIGHT_DATA, else the folder `data` in the cache
    folder (`cache_dir`): $FEWSIGHT_CACHE/data where FEWSIGHT_CACHE is set, else
    $XDG_CACHE_HOME/fewsight/data, else ~/.cache/fewsight/data."""
    if flag:
        return Path(flag).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return cache_dir() / "data"


def describe_root(flag: str | os.PathLike | None = None) -> str:
    """The resolved data root and where it comes from, for messages."""
    root = data_root(flag).absolute()
    if flag:
        return f"{root}, given by --data-root"
    if os.environ.get(DATA_ENV):
        return f"{root}, given by {DATA_ENV}"
    if os.environ.get(CACHE_ENV):
        default = f"${CACHE_ENV}/data"
    elif os.environ.get("XDG_CACHE_HOME"):
        default = "$XDG_CACHE_HOME/fewsight/data"
    else:
        default = "~/.cache/fewsight/data"
    return f"{root}, the default {default}, as neither --data-root nor {DATA_ENV} is set"


def unwritable(what: str, path: Path, error: OSError) -> str:
    """One line: `what` at `path` could not be written, why (a full disk, a read-only folder) and
    what to do about it."""
    reason = error.strerror or str(error)
    if error.errno in _FULL:
        return (
            f"could not write {what} {path}: the disk is full ({reason}); free some space there, "
            f"or set {CACHE_ENV} to a folder on a disk with room"
        )
    if error.errno in _READ_ONLY:
        reason = f"the folder is not writable: {reason}"
    elif error.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = f"part of that path is a file, not a folder: {reason}"
    return f"could not write {what} {path} ({reason}); set {CACHE_ENV} to a writable folder"


def write_atomically(target: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `target` with `write(handle)` into a temporary file beside it, flushed to disk, then
    renamed over it: a crash leaves the old file or the new one, never a mix, and on any failure
    (an OSError such as a full disk, an interrupt) the temporary file is removed and the error raised."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


def download(url: str, target: Path, md5: str) -> None:
    """Download url to target atomically, refusing content whose MD5 differs from the expected one.

    Raises ConnectionError when the network fails, a FewsightError when the download cannot be
    written (naming the file and what to do) or has the wrong checksum; nothing is left behind."""

    def fetch(handle: BinaryIO) -> None:
        digest = hashlib.md5()
        try:
            response = urllib.request.urlopen(url, timeout=60)
        except _NETWORK_ERRORS as error:
            raise ConnectionError(f"{url}: {error}") from error
        with response:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except _NETWORK_ERRORS as error:
                    raise ConnectionError(f"{url}: {error}") from error
                if not chunk:
                    break
                digest.update(chunk)
                handle.write(chunk)
        if digest.hexdigest() != md5:
            raise FewsightError(f"{url} downloaded with a wrong checksum (expected MD5 {md5}); try again")

    try:
        write_atomically(target, fetch)
    except ConnectionError:
        raise
    except OSError as error:
        raise FewsightError(unwritable("the download", target, error)) from error


def find_or_download(
    flag: str | os.PathLike | None, folder: str, files: dict[str, tuple[str, str]]
) -> list[Path]:
    """Paths of `files` under <data root>/folder (see `data_root`), downloading missing ones from
    their (url, md5) into <cache folder>/data/folder.

    Offline, raises a FewsightError that says which files to put where.
    """
    root = data_root(flag)
    wanted = [root / folder / name for name in files]
    missing = [path for path in wanted if not path.is_file()]
    if not missing:
        return wanted
    fallback = cache_dir() / "data" / folder
    resolved = []
    for path in wanted:
        if path.is_file():
            resolved.append(path)
            continue
        cached = fallback / path.name
        if not cached.is_file():
            url, md5 = files[path.name]
            try:
                download(url, cached, md5)
            except ConnectionError as error:
                names = ", ".join(p.name for p in missing)
                raise FewsightError(
                    f"missing {names} in {(root / folder).absolute()} (data root "
                    f"{describe_root(flag)}) and the download failed ({error}); put the files there, "
                    f"or pass --data-root / set {DATA_ENV} to a folder holding {folder}/"
                ) from error
        resolved.append(cached)
    return resolved
