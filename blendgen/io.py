"""Small file helpers shared by every writer: nothing half-written is ever visible."""

from __future__ import annotations

import contextlib
import json
import os
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
