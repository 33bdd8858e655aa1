"""One process at a time trains into a run folder: it holds RUN/.lock (an flock, which the system
releases when the process ends, however it ends) with its PID written in it for the message that
refuses a second one. A lock file left by a killed process is taken over."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from fewsight.errors import FewsightError
from fewsight.run.files import make_folder

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

LOCK = ".lock"
_held: set[Path] = set()  # the run folders this process holds
Function = TypeVar("Function", bound=Callable)


def holds_run_folder(function: Function) -> Function:
    """`function(config, out, ...)` (train, pretrain) run while this process holds `out`
    (`run_folder_lock`)."""

    @functools.wraps(function)
    def locked(*args: object, **kwargs: object) -> object:
        out = inspect.signature(function).bind(*args, **kwargs).arguments["out"]
        with run_folder_lock(Path(out)):
            return function(*args, **kwargs)

    return locked  # type: ignore[return-value]


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold the run folder `out` (making it if need be) while the block runs, or refuse in one line
    naming the folder and the process that holds it. Under torchrun only rank 0, the one that
    writes, takes it. Folders made here and left empty are removed again."""
    if fcntl is None or not _writes() or out.resolve() in _held or (out.exists() and not out.is_dir()):
        yield
        return
    made = [folder for folder in (out, *out.parents) if not folder.exists()]
    make_folder(out, "--out")
    try:
        descriptor = _acquire(out)
        _held.add(out.resolve())
        try:
            yield
        finally:
            _held.discard(out.resolve())
            (out / LOCK).unlink(missing_ok=True)
            os.close(descriptor)
    finally:
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                folder.rmdir()


def _writes() -> bool:
    """Whether this process writes the run folder: rank 0 under torchrun, else the only process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _acquire(out: Path) -> int:
    """A descriptor of OUT/.lock with an exclusive flock on it and this process's PID in it."""
    path = out / LOCK
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 200).decode(errors="replace").split()
            os.close(descriptor)
            if _ended(holder):  # a process it started still holds the lock: take it over
                path.unlink(missing_ok=True)
                continue
            raise FewsightError(
                f"{out} is in use: {_who(holder)} is training into it (it holds {path}); wait for it to "
                "end, or choose another --out"
            ) from None
        try:
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file as it ended: lock the new one
            os.close(descriptor)
            continue
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()} {socket.gethostname()}\n".encode())
        return descriptor


def _who(holder: list[str]) -> str:
    if not holder:
        return "another process"
    if len(holder) > 1 and holder[1] != socket.gethostname():
        return f"process {holder[0]} on {holder[1]}"
    return f"process {holder[0]}"


def _ended(holder: list[str]) -> bool:
    """Whether the process named in a lock file (PID, host) has ended (on this host only)."""
    if len(holder) < 2 or holder[1] != socket.gethostname() or not holder[0].isdigit():
        return False
    try:
        os.kill(int(holder[0]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False
