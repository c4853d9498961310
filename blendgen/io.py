"""Small file helpers shared by every writer: nothing half-written is ever visible."""

from __future__ import annotations

import contextlib
import json
import os

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks, writers are not serialised
    fcntl = None
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write to; on success rename it onto ``final``.

    On any error the temporary file is removed, so readers only ever see complete files.
    The temporary name keeps the suffix so libraries that pick a format by suffix still work.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def make_dir(path: str | Path, what: str = "out") -> Path:
    """Create an output directory (and its parents), or fail in one line naming it, e.g. when
    the path, or a folder above it, is an existing file."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what}: cannot make the directory {path} ({exc.strerror or exc})") from None
    return path


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_figure(fig, path: str | Path, **savefig_kwargs) -> None:
    """Write a matplotlib figure atomically (creating the folder) and free it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    plt.close(fig)


class LockedError(ValueError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if missing) for the block, or fail at once
    in one line naming the holder's pid. The kernel drops the lock when its holder dies, so a
    killed writer never leaves a stale lock (a killed one leaves the file, which the next
    holder reuses); the holder removes the file when it is done."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(f"{what} is being written by another process (pid {holder}, lock {path}); "
                              "wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # still holding the lock: no other writer is inside
    finally:
        os.close(fd)  # releases the lock
