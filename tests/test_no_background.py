"""A dataset without background, whose id 0 is a real class, end to end: build-clusters ->
mix -> pack -> a tiny training -> trainer eval. Nothing on the way may treat id 0 as
background (drop it from the matrix, the clusters, the class sets or the scores)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from blendgen.generation.clusters import ClusterConfig, build_clusters
from blendgen.generation.mix import mix
from blendgen.generation.pack import pack
from blendgen.generation.sources import MixConfig, PackConfig
from blendgen.shards.directory import ShardDir
from blendgen.shards.runner import WriteOptions
from cli import trainer as trainer_cli
from trainer.config import TrainConfig
from trainer.train import run

NAMES = ("sky", "road", "car", "tree")  # id 0 = sky: every image has some, and it is a class to learn
COLOURS = np.array([[200, 170, 90], [90, 90, 90], [40, 40, 210], [40, 150, 40]], np.uint8)  # BGR


def street_scene(rng: np.random.Generator, h: int = 40, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Sky above a horizon, road below, a car and/or a tree on the road, a void line at the horizon."""
    label = np.zeros((h, w), np.uint8)
    horizon = int(rng.integers(h // 3, h // 2))
    label[horizon:] = 1
    for c in rng.choice([2, 3], size=int(rng.integers(0, 3)), replace=False):
        x = int(rng.integers(0, w - 12))
        label[horizon - 6:horizon + 8, x:x + 12] = c
    image = (COLOURS[label].astype(int) + rng.integers(-15, 16, (h, w, 3))).clip(0, 255).astype(np.uint8)
    label[horizon, :] = np.where(label[horizon, :] == 1, 255, label[horizon, :])
    return image, label


def write_dataset(root: Path, splits: dict[str, int]) -> dict[str, np.ndarray]:
    """A flat folder with split lists (splits/{split}.txt) and a classes.txt without background."""
    rng = np.random.default_rng(7)
    labels = {}
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    for split, count in splits.items():
        ids = [f"{split}{i:02d}" for i in range(count)]
        for image_id in ids:
            image, label = street_scene(rng)
            assert cv2.imwrite(str(root / "images" / f"{image_id}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert cv2.imwrite(str(root / "masks" / f"{image_id}.png"), label)
            labels[image_id] = label
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return labels


def test_no_background_dataset_runs_end_to_end(tmp_path):
    labels = write_dataset(tmp_path / "streets", {"train": 12, "val": 6})
    out = tmp_path / "out"
    index = build_clusters(ClusterConfig(dataset="folder", root=tmp_path / "streets", split="train", out=out),
                           progress=False)
    assert index.classes.background == () and index.object_names == list(NAMES)
    train = [labels[f"train{i:02d}"] for i in range(12)]
    by_hand = np.zeros((4, 4), np.int64)
    for label in train:
        present = [int(v) for v in np.unique(label) if v != 255]
        for i, m in itertools.permutations(present, 2):
            by_hand[i, m] += 1
    np.testing.assert_array_equal(index.cooccurrence, by_hand)
    assert index.class_counts[0] == 12  # every image is in the sky cluster

    result, plan = mix(MixConfig(out=out, write=WriteOptions(shard_size=32)), progress=False)
    assert (plan.rows["k"] == 0).any() and (plan.rows["j"] == 0).any()
    mixed = [s for r in ShardDir.open(out / "mixed").readers() for s in r]
    assert len(mixed) == result.samples == index.summary()["expected_mix"]["samples"]
    assert all(0 in s.dominant_classes and 0 in s.phantom_classes for s in mixed)  # sky kept as a class
    assert all(s.pair[0] in range(4) and s.pair[1] in range(4) for s in mixed)
    for split in ("train", "val"):
        pack(PackConfig(out=out, split=split, write=WriteOptions(shard_size=32)), progress=False)
    val = [s for r in ShardDir.open(out / "val").readers() for s in r]
    assert [s.key for s in val] == [f"val{i:02d}" for i in range(6)]
    assert all(np.array_equal(s.label, labels[s.key]) and 0 in s.dominant_classes for s in val)

    report = run(TrainConfig(shards=str(out), out=str(tmp_path / "runs"), name="nobg", backbone="mobilenet_v3_large",
                             crop=32, batch_size=4, iters1=2, iters2=1, workers=0, device="cpu", log_every=1,
                             checkpoint_every=2, progress=False, threads=1))
    assert list(report["per_class_iou"]) == list(NAMES)
    evaluated = CliRunner().invoke(trainer_cli, ["eval", "--checkpoint", str(tmp_path / "runs" / "nobg" / "stage2.pt"),
                                                 "--shards", str(out), "--workers", "0", "--device", "cpu", "--quiet",
                                                 "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert list(again["per_class_iou"]) == list(NAMES) and again["miou"] == report["miou"]
