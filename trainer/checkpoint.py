"""Checkpoints: plain dicts of tensors and JSON-like values, loadable with ``weights_only=True``.

A checkpoint holds the model's weights with everything needed to rebuild the model (the model
config, the class set) and to check it against the data it meets (nanoGPT's habit: the
checkpoint stores its config). ``last.pt`` adds the training state a resumed run continues from:
optimizer, LR scheduler, grad scaler, stage and step, the data position (epoch, batch within the
epoch) and the RNG states (python, numpy, torch, CUDA) as tensors. ``stage1.pt`` / ``stage2.pt``
hold the weights at the end of each stage.

Files are written under a temporary name and renamed, so a kill never leaves a half-written
checkpoint; a run that stops on a NaN loss keeps its last good one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from blendgen.datasets.classes import ClassSet

FORMAT = "trainer-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is unreadable or does not fit the model or data it is used with."""


def save(path: Path, payload: dict) -> None:
    """Write ``path`` atomically. When the write fails (a full disk shows as OSError, or as
    torch's RuntimeError from its zip writer), the temporary is removed and a one-line
    CheckpointError names the checkpoint that is still good."""
    tmp = temporary(path, os.getpid())
    try:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        kept = f"the last good checkpoint is {path}" if path.exists() else "no earlier checkpoint exists"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: could not write the checkpoint ({reason}); {kept}") from None


def temporary(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp-{pid}")


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the half-written checkpoints of killed processes (``.NAME.tmp-PID`` whose process
    is gone) in ``directory``; returns what was removed."""
    removed = []
    for tmp in directory.glob(".*.pt.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler errors all mean the same to a user
        raise CheckpointError(f"{path}: not a loadable checkpoint ({load_error(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a trainer checkpoint (a bare state dict? use --init)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} (this trainer reads {VERSION})")
    return ckpt


def load_error(exc: BaseException) -> str:
    """A short reason for a failed ``torch.load``: torch's own text runs to several lines and
    advises ``weights_only=False``, which would execute whatever the file holds. Not that."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        reason = _first_sentence(detail[0]) if detail else "unreadable"
        return f"not a PyTorch file of tensors: {reason}; pickled objects are never loaded, they could run code"
    first = _first_sentence((text.strip().splitlines() or [""])[0])
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _first_sentence(line: str) -> str:
    """Up to the first full stop, whole: cutting at a character count ended the reason mid-word,
    and torch's second sentence is the advice to allowlist the file's classes."""
    line = line.strip()
    end = line.find(". ")
    return line[:end] if end > 0 else line.rstrip(".")


def check_compatible(ckpt: dict, where: str, *, model_config: dict | None = None,
                     classes: ClassSet | None = None) -> None:
    """Refuse a checkpoint of another architecture or another label space, in one sentence."""
    if model_config is not None:
        theirs = ckpt["model_config"]
        for key in ("backbone", "num_classes", "ssh", "two_branch", "output_stride", "hidden"):
            if key in model_config and theirs.get(key) != model_config[key]:
                raise CheckpointError(f"{where}: checkpoint has {key}={theirs.get(key)!r}, "
                                      f"this run needs {key}={model_config[key]!r}")
    if classes is not None and tuple(ckpt["classes"]["names"]) != classes.names:
        raise CheckpointError(f"{where}: checkpoint classes {list(ckpt['classes']['names'])} differ from the "
                              f"data's {list(classes.names)}")


# -- RNG states as tensors (weights_only cannot load numpy arrays or python tuples) ---------------
def rng_state() -> dict:
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
