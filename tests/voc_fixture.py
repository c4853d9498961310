"""Write tiny PASCAL VOC-layout datasets for tests: palette PNG labels, JPEG images, lists."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from blendgen.datasets.classes import voc_palette


def write_palette_png(path: Path, label: np.ndarray) -> None:
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(voc_palette().reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def write_voc(root: Path, labels: dict[str, np.ndarray], split: str = "train", seed: int = 0,
              image_sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """One JPEG + one palette PNG per id; ``image_sizes`` overrides an image's (H, W)."""
    rng = np.random.default_rng(seed)
    for image_id, label in labels.items():
        h, w = (image_sizes or {}).get(image_id, label.shape)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), image)
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", label)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in labels))
    return root


def label_with_classes(classes: list[int], shape=(24, 32), void_border: bool = True) -> np.ndarray:
    """A label map holding each class of ``classes`` in its own vertical stripe, with a
    255 band between stripes as VOC's void borders."""
    label = np.zeros(shape, dtype=np.uint8)
    if not classes:
        return label
    w = shape[1] // (len(classes) + 1)
    for n, c in enumerate(classes):
        x0 = (n + 1) * w // 2 + n * w // 2
        label[2:-2, x0:x0 + w // 2] = c
        if void_border:
            label[1, x0:x0 + w // 2] = 255
    return label
