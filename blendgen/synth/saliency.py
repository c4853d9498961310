"""A made-up salient object detection set in the layouts of DUTS-TR and ECSSD, from the demo scenes.

    blendgen synth --task saliency --out data/demo-sod --train 400 --val 120

writes::

    out/DUTS-TR/DUTS-TR-Image/2026_000001.jpg   training images (JPEG quality 90)
    out/DUTS-TR/DUTS-TR-Mask/2026_000001.png    8-bit grey mask, 0 background / 255 salient
    out/ECSSD/images/2026_000401.jpg            validation images
    out/ECSSD/ground_truth_mask/2026_000401.png
    out/synth.json                              the config and a summary

Each image is a scene of the synthetic VOC demo (:func:`blendgen.synth.render.render_sample`, drawn from
the same generator seeds, so with the same ``--seed`` the images are the VOC demo's own) and the
salient object is the **front-most** one: the object painted last, which nothing occludes (ours;
saliency annotators mark the object that stands out, and in these scenes nearer objects are lower
and unoccluded). The VOC demo's void band around outlines is filled from the nearest labelled
pixel, since a saliency mask has no void.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..datasets.classes import IGNORE_INDEX
from .render import render_sample
from .sets import JPEG_QUALITY, SPLITS, SynthConfig, _run, fresh_partial_dir

TRAIN_DIRS = ("DUTS-TR", "DUTS-TR-Image", "DUTS-TR-Mask")
VAL_DIRS = ("ECSSD", "images", "ground_truth_mask")


def fill_void(instances: np.ndarray) -> np.ndarray:
    """(H, W) uint8 instance ids with 255 void -> every void pixel takes its nearest non-void id."""
    void = instances == IGNORE_INDEX
    if not void.any() or void.all():
        return np.where(void, 0, instances).astype(np.uint8)
    # Each non-void pixel gets its own label; every pixel learns the label of its nearest one.
    _, nearest = cv2.distanceTransformWithLabels(void.astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    value_of = np.zeros(int(nearest.max()) + 1, np.uint8)
    value_of[nearest[~void]] = instances[~void]
    return value_of[nearest]


def salient_mask(instances: np.ndarray) -> np.ndarray:
    """(H, W) uint8 0 / 255: the front-most object (the highest paint-order id)."""
    filled = fill_void(instances)
    front = int(filled.max())
    return np.where((filled == front) & (front > 0), 255, 0).astype(np.uint8)


def _make_one(task: tuple[str, int, str], root: Path, seed: int, min_size: int, max_size: int,
              object_scale: float) -> dict:
    """Worker: render one scene (the VOC demo's generator and seeds) and write image and mask."""
    split, index, image_id = task
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    sample = render_sample(rng, min_size, max_size, object_scale)
    mask = salient_mask(sample.instances)
    top, images, masks = TRAIN_DIRS if split == "train" else VAL_DIRS
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok or not cv2.imwrite(str(root / top / masks / f"{image_id}.png"), mask):
        raise RuntimeError(f"{image_id}: encoding failed")
    (root / top / images / f"{image_id}.jpg").write_bytes(jpeg.tobytes())
    return {"split": split, "salient_fraction": float((mask > 0).mean()), "objects": len(sample.objects)}


def make_synthetic_saliency(config: SynthConfig, progress: bool = True) -> dict:
    """Write the made-up saliency set to ``config.out`` (see the module docstring); return a summary:
    ``images`` per split and the mean salient pixel fraction. Written in ``<out>.partial`` and renamed
    when complete; FileExistsError if ``out`` exists and is not empty."""
    out = config.out
    partial_dir = fresh_partial_dir(out)
    for top, images, masks in (TRAIN_DIRS, VAL_DIRS):
        (partial_dir / top / images).mkdir(parents=True)
        (partial_dir / top / masks).mkdir(parents=True)
    try:
        tasks = [(split, i, image_id) for split in SPLITS for i, image_id in enumerate(config.image_ids(split))]
        work = partial(_make_one, root=partial_dir, seed=config.seed, min_size=config.min_size,
                       max_size=config.max_size, object_scale=config.object_scale)
        with tqdm(total=len(tasks), desc="synth saliency", unit="img", disable=not progress) as bar:
            records = []
            for record in _run(work, tasks, config.workers):
                records.append(record)
                bar.update(1)
        summary = {"images": {s: sum(r["split"] == s for r in records) for s in SPLITS},
                   "salient_fraction": {s: round(float(np.mean([r["salient_fraction"] for r in records
                                                                if r["split"] == s])), 4) for s in SPLITS},
                   "layouts": {"train": "/".join(TRAIN_DIRS[:2]), "val": "/".join(VAL_DIRS[:2])}}
        settings = {k: v for k, v in asdict(config).items() if k not in ("out", "workers")}
        (partial_dir / "synth.json").write_text(json.dumps({"task": "saliency", "config": settings,
                                                           "summary": summary}, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        partial_dir.rename(out)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    return summary
