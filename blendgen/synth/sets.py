"""What the two made-up datasets share: their config, their ids, the worker pool and the
write-then-rename of the output folder. Every image draws from ``default_rng([seed, split_code,
index])`` (:mod:`blendgen.synth.model`), so neither set depends on the order or the worker count."""

from __future__ import annotations

import multiprocessing
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val")
ID_PREFIX = "2026_"
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SynthConfig:
    out: Path
    seed: int = 0
    num_train: int = 400
    num_val: int = 120
    min_size: int = 96   # width and height are drawn independently from [min_size, max_size]
    max_size: int = 192
    # Object size against the image's shorter side (ours). At 1.0 objects cover 9% of the labelled
    # pixels, at 1.7 about 23%; the larger objects did not make the demo learn faster
    # (docs/experiments.md), so the demo set keeps 1.0.
    object_scale: float = 1.0
    workers: int = 1     # processes; the output does not depend on it

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))
        for name in ("seed", "num_train", "num_val", "min_size", "max_size", "workers"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name}: expected an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers would not go into JSON
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0 (numpy seed sequences take no negatives), got {self.seed}")
        if self.num_train < 1:
            raise ValueError(f"num_train: need at least 1 training image, got {self.num_train}")
        if self.num_val < 1:
            raise ValueError(f"num_val: need at least 1 validation image, got {self.num_val}")
        if self.num_train + self.num_val > 999_999:
            raise ValueError("num_train: ids have 6 digits, at most 999999 images in all (with num_val)")
        if self.min_size < 32:
            raise ValueError(f"min_size: must be >= 32 px for objects to stay recognisable, got {self.min_size}")
        if self.max_size < self.min_size:
            raise ValueError(f"max_size: must be >= min_size ({self.min_size}), got {self.max_size}")
        if self.max_size > 4096:
            raise ValueError(f"max_size: must be <= 4096, got {self.max_size}")
        if not isinstance(self.object_scale, (int, float)) or not 0.25 <= self.object_scale <= 3:
            raise ValueError(f"object_scale: expected a number in [0.25, 3], got {self.object_scale!r}")
        object.__setattr__(self, "object_scale", float(self.object_scale))
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")

    def image_ids(self, split: str) -> list[str]:
        """Ids run on across splits, train first: 2026_000001 ... like VOC's year_number ids."""
        start = 1 if split == "train" else 1 + self.num_train
        count = self.num_train if split == "train" else self.num_val
        return [f"{ID_PREFIX}{start + i:06d}" for i in range(count)]


def _run(work, tasks: list, workers: int):
    """Results of ``work`` over ``tasks`` in task order, in this process or in a pool. Every
    image draws from its own generator, so the order of execution does not matter."""
    if workers == 1:
        yield from map(work, tasks)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(work, tasks, chunksize=8)


def fresh_partial_dir(out: Path) -> Path:
    """``<out>.partial``, empty, to generate into and rename to ``out`` when complete.
    FileExistsError if ``out`` exists and is not empty; a killed run's leftover is removed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not empty; remove it or choose another --out")
    partial_dir = out.parent / (out.name + ".partial")
    if partial_dir.exists():  # left by a killed run; it was never complete
        shutil.rmtree(partial_dir)
    return partial_dir

