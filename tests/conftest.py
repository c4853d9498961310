"""Shared fixtures: tiny shard directories written with the real blendgen writer.

``tiny_shards(tmp_path)`` returns a shard root holding ``mixed/`` (24 blended samples in two
uneven shards: fewer shards than workers x ranks in the tests), ``train/`` (16 standard samples)
and ``val/`` (8 standard samples of varying sizes, for full-image evaluation), over 4 classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from blendgen.datasets.classes import ClassSet
from blendgen.shards.manifest import MANIFEST, manifest_dict, shard_name
from blendgen.shards.schema import Sample, ShardHeader, encode_sample
from blendgen.shards.writer import ShardWriter

TINY_CLASSES = ClassSet(names=("background", "disc", "bar", "box"))
COLOURS = np.array([[90, 90, 90], [220, 40, 40], [40, 200, 60], [50, 70, 230]], dtype=np.uint8)


def random_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) uint8 label: 1-3 coloured shapes, a void border."""
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        c = int(rng.integers(1, 4))
        y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        y1, x1 = y0 + int(rng.integers(6, h // 2)), x0 + int(rng.integers(6, w // 2))
        label[y0:y1, x0:x1] = c
    label[:1, :] = 255
    noise = rng.integers(-20, 21, (h, w, 3))
    colour = COLOURS[np.where(label == 255, 0, label)].astype(int)  # void pixels look like background
    image = np.clip(colour + noise, 0, 255).astype(np.uint8)
    return image, label


def write_shard_dir(path: Path, kind: str, sizes: list[int], seed: int, shape=(48, 64), vary: bool = False) -> Path:
    """A shard directory with ``len(sizes)`` shards of ``sizes[i]`` samples and its manifest."""
    path.mkdir(parents=True)
    header = ShardHeader(kind=kind, classes=TINY_CLASSES, split="val" if vary else "train", image_codec="png")
    rng = np.random.default_rng(seed)
    infos, k = [], 0
    for s, n in enumerate(sizes):
        with ShardWriter(path / shard_name(s), header) as writer:
            for _ in range(n):
                h, w = shape
                if vary:
                    h, w = h + int(rng.integers(-8, 9)), w + int(rng.integers(-8, 9))
                image, label = random_scene(rng, h, w)
                phantom, delta = None, 1.0
                if kind == "mixed":
                    other, phantom = random_scene(rng, h, w)
                    delta = float(rng.uniform(0.7, 1.0))
                    image = np.round(delta * image + (1 - delta) * other).astype(np.uint8)
                sample = Sample(key=f"{kind}-{k:04d}", image=image, label=label, phantom_label=phantom, delta=delta,
                                dominant_id=f"img{k}", dominant_classes=tuple(int(c) for c in np.unique(label) if 0 < c < 255))
                writer.write(encode_sample(sample, header))
                k += 1
        infos.append(writer.info)
    (path / MANIFEST).write_text(json.dumps(manifest_dict(header, infos, cooccurrence=np.zeros((3, 3), int))))
    return path


def make_tiny_shards(root: Path) -> Path:
    write_shard_dir(root / "mixed", "mixed", [13, 11], seed=1)
    write_shard_dir(root / "train", "standard", [16], seed=2)
    write_shard_dir(root / "val", "standard", [8], seed=3, vary=True)
    return root


@pytest.fixture
def tiny_shards(tmp_path) -> Path:
    """out/ with mixed/ (24 samples, 2 shards), train/ (16), val/ (8, varying sizes)."""
    return make_tiny_shards(tmp_path / "out")


@pytest.fixture(scope="session")
def shared_shards(tmp_path_factory) -> Path:
    """The same tiny out/, written once per session for tests that only read it."""
    return make_tiny_shards(tmp_path_factory.mktemp("shards") / "out")
