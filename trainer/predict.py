"""``trainer predict``: colour-coded label maps for image files.

    trainer predict --checkpoint runs/demo/stage2.pt photo1.jpg photo2.png --out predictions/

Each IMAGE becomes ``OUT/<stem>.png``, an indexed (palette) PNG as in VOC's
SegmentationClass: the pixel values are the predicted class ids and the palette is the
checkpoint's class set, so any viewer shows colours and any reader gets ids back.

``blendgen pseudo-label`` (:func:`write_pseudo_labels`) does the same over a whole folder, for
the pseudo semantic labels of a saliency set (IJCV Sect. 4.5): with a progress bar, each PNG
written under a temporary name and renamed, files already there skipped (a rerun resumes), and
``OUT/classes.json`` holding the checkpoint's class set, which ``blendgen build-clusters
--dataset saliency`` reads with the PNGs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from blendgen.classes import ClassSet
from blendgen.io import atomic_path, make_dir

from . import checkpoint as ckpt_io
from .distributed import resolve_device
from .evaluate import HEADS, eval_head, model_from_checkpoint
from .model import prediction
from .transforms import normalize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PSEUDO_CLASSES = "classes.json"  # blendgen.saliency.PSEUDO_CLASSES


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


class Predictor:
    """A checkpoint's network, ready to label images at full resolution."""

    def __init__(self, checkpoint: str, device: str = "auto", head: str = "auto") -> None:
        self.device = resolve_device(device)
        ckpt = ckpt_io.load(checkpoint)
        self.classes = ClassSet.from_json(ckpt["classes"])
        self.model = model_from_checkpoint(ckpt, self.device).eval()
        self.head = eval_head(self.model, ckpt["stage"], head)

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) uint8 predicted class ids."""
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(self.device)  # (1, 3, H, W)
        pred = prediction(self.model(normalize(x)), self.head).argmax(1)[0]  # (H, W)
        return pred.to(torch.uint8).cpu().numpy()


def predict_images(config: PredictConfig) -> list[Path]:
    """Predict every image at full resolution; returns the written files."""
    predictor = Predictor(config.checkpoint, config.device, config.head)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in config.images:
        target = out / f"{Path(path).stem}.png"
        save_label_png(target, predictor(read_rgb(path)), predictor.classes)
        written.append(target)
    return written


# -- pseudo labels of a folder (blendgen pseudo-label) ----------------------------------------------
@dataclass(frozen=True)
class PseudoLabelConfig:
    checkpoint: str
    images: str  # a folder of .jpg / .jpeg / .png images
    out: str
    device: str = "auto"
    head: str = "auto"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {self.head!r}")
        if not Path(self.images).is_dir():
            raise ValueError(f"images: {self.images} is not a folder of images")


def image_files(folder: Path) -> list[Path]:
    """The visible image files directly in ``folder``, sorted; two with one stem are an error
    (both would write the same PNG)."""
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise ValueError(f"images: {p} and {stems[p.stem].name} would both write {p.stem}.png")
        stems[p.stem] = p
    if not files:
        raise ValueError(f"images: {folder} holds no .jpg, .jpeg or .png files")
    return files


def pseudo_label_meta(config: PseudoLabelConfig, predictor: Predictor) -> dict:
    return {"format": "blendgen-pseudo-labels", "classes": predictor.classes.to_json(),
            "checkpoint": str(Path(config.checkpoint).resolve()), "head": predictor.head,
            "images": str(Path(config.images).resolve())}


def check_same_labeller(path: Path, meta: dict) -> None:
    """A folder resumed with another checkpoint or class set would mix two models' labels."""
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: unreadable ({exc}); remove the folder or choose another --out") from None
    for key in ("classes", "checkpoint", "head"):
        if old.get(key) != meta[key]:
            raise ValueError(f"{path}: these pseudo labels were made with another {key} "
                             f"({old.get(key) if key != 'classes' else 'class set'}); choose another --out")


def write_pseudo_labels(config: PseudoLabelConfig, progress: bool = True) -> dict:
    """Label every image of ``config.images`` into ``OUT/<stem>.png`` (palette PNG of class ids),
    skipping those already written; returns {"images", "written", "skipped", "out"}."""
    from tqdm import tqdm

    files = image_files(Path(config.images))
    out = make_dir(config.out)
    for stale in out.glob(".*.tmp-*.png"):  # a killed run's half-written file is never complete
        stale.unlink(missing_ok=True)
    predictor = Predictor(config.checkpoint, config.device, config.head)
    meta = pseudo_label_meta(config, predictor)
    check_same_labeller(out / PSEUDO_CLASSES, meta)
    with atomic_path(out / PSEUDO_CLASSES) as tmp:  # first: a resumed folder is checked against it
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    todo = [p for p in files if not (out / f"{p.stem}.png").is_file()]
    bar = tqdm(total=len(files), initial=len(files) - len(todo), desc="pseudo labels", unit="img",
               disable=not progress)
    for path in todo:
        label = predictor(read_rgb(path))
        with atomic_path(out / f"{path.stem}.png") as tmp:
            save_label_png(tmp, label, predictor.classes)
        bar.update(1)
    bar.close()
    return {"images": len(files), "written": len(todo), "skipped": len(files) - len(todo), "out": str(out)}
