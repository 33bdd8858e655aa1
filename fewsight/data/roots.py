"""Where data sets and decoded caches live: a flag, else an environment variable, else a cache folder.

Archives are read, never written beside: decoded tensors go to the cache folder, so a read-only data
root (a shared disk, CI) works.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from fewsight.errors import FewsightError

DATA_ENV = "FEWSIGHT_DATA"
CACHE_ENV = "FEWSIGHT_CACHE"


def cache_dir() -> Path:
    """Folder for decoded tensors and downloads: $FEWSIGHT_CACHE, else $XDG_CACHE_HOME/fewsight."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fewsight"


def data_root(flag: str | os.PathLike | None = None) -> Path:
    """The data root: the --data-root flag, else $FEWSIGHT_DATA, else <cache>/data."""
    if flag:
        return Path(flag).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return cache_dir() / "data"


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, target: Path, md5: str) -> None:
    """Download url to target atomically, refusing content whose MD5 differs from the expected one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as part:
        temporary = Path(part.name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    part.write(chunk)
        except (urllib.error.URLError, OSError) as error:
            temporary.unlink(missing_ok=True)
            raise ConnectionError(f"{url}: {error}") from error
    if file_digest(temporary, "md5") != md5:
        temporary.unlink(missing_ok=True)
        raise FewsightError(f"{url} downloaded with a wrong checksum (expected MD5 {md5}); try again")
    os.replace(temporary, target)


def find_or_download(root: Path, folder: str, files: dict[str, tuple[str, str]]) -> list[Path]:
    """Paths of `files` under root/folder, downloading missing ones from their (url, md5).

    Offline, raises a FewsightError that says which files to put where.
    """
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
                    f"missing {names} in {root / folder} and the download failed ({error}); "
                    f"put the files there, or pass --data-root / set {DATA_ENV} to a folder "
                    f"holding {folder}/"
                ) from error
        resolved.append(cached)
    return resolved
