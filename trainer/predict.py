"""``trainer predict``: colour-coded label maps for image files.

    trainer predict --checkpoint runs/demo/stage2.pt photo1.jpg photo2.png --out predictions/

Each IMAGE becomes ``OUT/<stem>.png``, an indexed (palette) PNG as in VOC's
SegmentationClass: the pixel values are the predicted class ids and the palette is the
checkpoint's class set, so any viewer shows colours and any reader gets ids back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from blendgen.classes import ClassSet

from . import checkpoint as ckpt_io
from .distributed import resolve_device
from .evaluate import HEADS, eval_head, model_from_checkpoint
from .model import prediction
from .transforms import normalize


@dataclass(frozen=True)
class PredictConfig:
    checkpoint: str
    images: tuple[str, ...]
    out: str
    device: str = "auto"
    head: str = "auto"

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("images: give at least one image file")
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {self.head!r}")


def read_rgb(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"images: {path} is not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # (H, W, 3) uint8


def save_label_png(path: Path, label: np.ndarray, classes: ClassSet) -> None:
    """(H, W) uint8 ids -> a palette PNG coloured by the class set."""
    image = Image.fromarray(label)  # mode "L"; putpalette turns it into "P" keeping the ids
    image.putpalette(classes.palette.reshape(-1).tolist())
    image.save(path)


@torch.inference_mode()
def predict_images(config: PredictConfig) -> list[Path]:
    """Predict every image at full resolution; returns the written files."""
    device = resolve_device(config.device)
    ckpt = ckpt_io.load(config.checkpoint)
    classes = ClassSet.from_json(ckpt["classes"])
    model = model_from_checkpoint(ckpt, device).eval()
    head = eval_head(model, ckpt["stage"], config.head)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in config.images:
        rgb = read_rgb(path)
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(device)  # (1, 3, H, W)
        pred = prediction(model(normalize(x)), head).argmax(1)[0]  # (H, W)
        target = out / f"{Path(path).stem}.png"
        save_label_png(target, pred.to(torch.uint8).cpu().numpy(), classes)
        written.append(target)
    return written
