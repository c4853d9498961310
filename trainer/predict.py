"""``trainer predict``: colour-coded label maps for image files.

    trainer predict --checkpoint runs/demo/stage2.pt photo1.jpg photo2.png --out predictions/

Each IMAGE becomes ``OUT/<stem>.png``, an indexed (palette) PNG as in VOC's
SegmentationClass: the pixel values are the predicted class ids and the palette is the
checkpoint's class set, so any viewer shows colours and any reader gets ids back. A FOLDER is
walked recursively (image suffixes, dot files and dot folders skipped) and its predictions
mirror each file's path relative to it. docs/predict.md has the options: overlays, the pixel
limit, sliding-window inference of large photos, what a failure looks like.

``blendgen pseudo-label`` (:func:`write_pseudo_labels`) does the same over a whole folder, for
the pseudo semantic labels of a saliency set (IJCV Sect. 4.5): with a progress bar, each PNG
written under a temporary name and renamed, files already there skipped (a rerun resumes), and
``OUT/classes.json`` holding the checkpoint's class set, which ``blendgen build-clusters
--dataset saliency`` reads with the PNGs.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from blendgen.datasets.classes import ClassSet
from blendgen.datasets.files import MAX_PIXELS, header_size
from blendgen.datasets.saliency import PSEUDO_CLASSES  # the pseudo-label folder's class set, read back there
from blendgen.io import atomic_path, make_dir

from . import checkpoint as ckpt_io
from .distributed import resolve_device
from .evaluate import HEADS, checkpoint_eval_scale, eval_head, model_from_checkpoint
from .model import prediction, scaled_forward
from .transforms import normalize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# What a folder walk of ``trainer predict`` picks up: every format OpenCV decodes and PIL sizes.
PREDICT_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Sliding-window inference (mmseg's "slide" mode) for images larger than TILE either way: tiles
# of TILE x TILE every STRIDE pixels, overlapping logits averaged. Whole-image inference of a
# 12-Mpx photo peaked at several GB on CPU (docs/predict.md); a 1024 tile bounds it, and images
# up to 1024 px (VOC's, the demo's) are still predicted whole, as before.
TILE = 1024
STRIDE = 768
OVERLAY_SUFFIX = ".overlay.jpg"


@dataclass(frozen=True)
class PredictConfig:
    checkpoint: str
    images: tuple[str, ...]  # image files and folders of them
    out: str
    device: str = "auto"
    head: str = "auto"
    overwrite: bool = False  # redo predictions already in OUT (default: skip them, so a rerun resumes)
    overlay: bool = False  # also OUT/<stem>.overlay.jpg: the class colours over the photo
    opacity: float = 0.5
    max_pixels: int | None = MAX_PIXELS
    tile: int = TILE  # 0 = always the whole image at once
    stride: int = STRIDE

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("images: give at least one image file or folder")
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {self.head!r}")
        if not 0 < self.opacity <= 1:
            raise ValueError(f"opacity: expected a number in (0, 1], got {self.opacity}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels: expected >= 1, got {self.max_pixels}")
        check_tiling(self.tile, self.stride)


def check_tiling(tile: int, stride: int) -> None:
    if tile != 0 and tile < 32:
        raise ValueError(f"tile: expected 0 (whole images) or >= 32 pixels, got {tile}")
    if tile and not 0 < stride <= tile:
        raise ValueError(f"stride: expected 1..{tile} (the tile), got {stride}")


def shown(path: str | Path) -> str:
    """A path as text that can always be printed: bytes of a name that is not UTF-8 (a latin-1
    ``caf\\xe9.jpg`` arrives as a surrogate escape) are written as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_rgb(path: str | Path, max_pixels: int | None = MAX_PIXELS, hint: str = "") -> np.ndarray:
    """(H, W, 3) uint8 RGB of any file name: the bytes are read by Python (cv2.imread given a
    name that is not UTF-8 crashed the process) and decoded from memory, after the header's
    size is checked against ``max_pixels``."""
    name = Path(shown(path))
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"{name}: unreadable ({exc.strerror or exc})") from None
    header_size(name, max_pixels, data.tobytes(), hint)  # bytes only: the name is for the message
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{name}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # (H, W, 3) uint8


def save_label_png(path: Path, label: np.ndarray, classes: ClassSet) -> None:
    """(H, W) uint8 ids -> a palette PNG coloured by the class set."""
    image = Image.fromarray(label)  # mode "L"; putpalette turns it into "P" keeping the ids
    image.putpalette(classes.palette.reshape(-1).tolist())
    image.save(path)


def overlay(rgb: np.ndarray, label: np.ndarray, classes: ClassSet, opacity: float) -> np.ndarray:
    """The photo with each object class's colour laid over it at ``opacity``; background is left
    as the photo, so what the network found stands out (mmseg's show_result colours it too)."""
    colours = classes.palette[label].astype(np.float32)
    mixed = rgb.astype(np.float32) * (1 - opacity) + colours * opacity
    objects = ~np.isin(label, np.asarray(classes.background, dtype=np.uint8))
    return np.where(objects[..., None], np.round(mixed), rgb).astype(np.uint8)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of the windows along one side: every ``stride``, the last one flush with the end."""
    if length <= tile:
        return [0]
    count = -(-(length - tile) // stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


class Predictor:
    """A checkpoint's network, ready to label images at full resolution."""

    def __init__(self, checkpoint: str, device: str = "auto", head: str = "auto",
                 tile: int = TILE, stride: int = STRIDE) -> None:
        check_tiling(tile, stride)
        self.device = resolve_device(device)
        ckpt = ckpt_io.load(checkpoint)
        self.classes = ClassSet.from_json(ckpt["classes"])
        self.model = model_from_checkpoint(ckpt, self.device).eval()
        self.head = eval_head(self.model, ckpt["stage"], head)
        self.scale = checkpoint_eval_scale(ckpt, None)  # the size the run evaluated at (--eval-scale)
        self.tile, self.stride = tile, stride

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(3, h, w) uint8 -> (K, h, w) float logits of the chosen head."""
        return prediction(scaled_forward(self.model, normalize(x[None].to(self.device)), self.scale), self.head)[0]

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) uint8 predicted class ids."""
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))  # (3, H, W)
        h, w = rgb.shape[:2]
        if not self.tile or (h <= self.tile and w <= self.tile):
            return self.logits(x).argmax(0).to(torch.uint8).cpu().numpy()
        return self.slide(x)

    def slide(self, x: torch.Tensor) -> np.ndarray:
        """Sliding-window prediction: logits summed over the windows covering each pixel (the
        average's argmax, since a pixel's sum and mean differ by one positive factor). Only one
        band of window rows is held, (K, tile, W), and rows no later window reaches are decided
        as soon as their band is done, so memory does not grow with the image's height."""
        _, h, w = x.shape
        th, tw = min(self.tile, h), min(self.tile, w)
        ys, xs = tile_starts(h, th, self.stride), tile_starts(w, tw, self.stride)
        out = np.empty((h, w), np.uint8)
        band = None  # band row 0 is image row y
        for i, y in enumerate(ys):
            for x0 in xs:
                logits = self.logits(x[:, y:y + th, x0:x0 + tw]).float()
                if band is None:
                    band = torch.zeros((logits.shape[0], th, w), device=logits.device)
                band[:, :, x0:x0 + tw] += logits
            done = (ys[i + 1] if i + 1 < len(ys) else h) - y  # rows the next window row starts below
            out[y:y + done] = band[:, :done].argmax(0).to(torch.uint8).cpu().numpy()
            band = torch.cat([band[:, done:], torch.zeros_like(band[:, :done])], dim=1)
        return out


def collect_images(inputs: tuple[str, ...], out: str | Path) -> list[tuple[Path, Path]]:
    """(image file, its prediction's path relative to OUT) for every input: a file gives
    ``<stem>.png``, a folder every image under it at its relative path (OUT itself skipped when
    it lies inside). ValueError naming both when two inputs would write one prediction."""
    out_dir = Path(out).resolve()
    found: list[tuple[Path, Path]] = []
    for given in map(Path, inputs):
        if given.is_dir():
            files = [f for f in walk_images(given, out_dir)]
            if not files:
                raise ValueError(f"images: {shown(given)} holds no image files ({', '.join(PREDICT_SUFFIXES)})")
            found += [(f, f.relative_to(given).with_suffix(".png")) for f in files]
        elif given.exists():
            found.append((given, Path(given.name).with_suffix(".png")))  # any suffix: the user named it
        else:
            raise ValueError(f"images: {shown(given)} does not exist")
    writers: dict[Path, Path] = {}
    for source, target in found:
        if target in writers:
            raise ValueError(f"images: {shown(writers[target])} and {shown(source)} would both write "
                             f"{shown(Path(out) / target)}; predict them into separate --out folders")
        writers[target] = source
    return found


def walk_images(folder: Path, skip: Path) -> list[Path]:
    """Image files under ``folder``, sorted, without dot files, dot folders or ``skip``."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != skip)
        files += [Path(root, n) for n in sorted(names)
                  if not n.startswith(".") and Path(n).suffix.lower() in PREDICT_SUFFIXES]
    return files


_TEMPORARY = re.compile(r"\..*\.tmp-(\d+)(\.png|\.jpg)")


def remove_stale_temporaries(folder: Path) -> None:
    """Half-written predictions of killed runs (atomic_path's names); a live process's are kept."""
    for tmp in folder.glob(".*.tmp-*"):
        m = _TEMPORARY.fullmatch(tmp.name)
        if m and not ckpt_io._alive(int(m.group(1))):
            tmp.unlink(missing_ok=True)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def predict_images(config: PredictConfig, progress: bool = True, say=None) -> dict:
    """Predict every image of ``config.images`` into ``config.out``, skipping predictions already
    there unless ``overwrite``. A file that fails is said in one line (``say``, default stderr)
    and the others go on. Returns {"images", "written", "skipped", "failed": [lines], "out"}."""
    from tqdm import tqdm

    say = say or (lambda line: tqdm.write(line, file=sys.stderr))
    todo_all = collect_images(config.images, config.out)  # refusals come before any work
    out = make_dir(config.out)
    predictor = Predictor(config.checkpoint, config.device, config.head, config.tile, config.stride)

    def targets(rel: Path) -> list[Path]:
        label = out / rel
        return [label, label.with_suffix(OVERLAY_SUFFIX)] if config.overlay else [label]

    todo = [(src, rel) for src, rel in todo_all
            if config.overwrite or not all(t.is_file() for t in targets(rel))]
    for folder in {(out / rel).parent for _, rel in todo}:
        if folder.is_dir():
            remove_stale_temporaries(folder)
    hint = " (--max-pixels to allow it)"
    failed = []
    bar = tqdm(total=len(todo_all), initial=len(todo_all) - len(todo), desc="predicting", unit="img",
               disable=not progress)
    for src, rel in todo:
        try:
            rgb = read_rgb(src, config.max_pixels, hint)
            label = predictor(rgb)
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                save_label_png(tmp, label, predictor.classes)
            if config.overlay:
                with atomic_path(target.with_suffix(OVERLAY_SUFFIX)) as tmp:
                    Image.fromarray(overlay(rgb, label, predictor.classes, config.opacity)).save(tmp, quality=90)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            text = one_line(exc)
            line = text if text.startswith(shown(src)) else f"{shown(src)}: {text}"
            failed.append(line)
            say(line)
        bar.update(1)
    bar.close()
    return {"images": len(todo_all), "written": len(todo) - len(failed), "skipped": len(todo_all) - len(todo),
            "failed": failed, "out": str(out)}


# -- pseudo labels of a folder (blendgen pseudo-label) ----------------------------------------------
@dataclass(frozen=True)
class PseudoLabelConfig:
    checkpoint: str
    images: str  # a folder of .jpg / .jpeg / .png images
    out: str
    device: str = "auto"
    head: str = "auto"
    max_pixels: int | None = MAX_PIXELS

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
        label = predictor(read_rgb(path, config.max_pixels, " (--max-pixels to allow it)"))
        with atomic_path(out / f"{path.stem}.png") as tmp:
            save_label_png(tmp, label, predictor.classes)
        bar.update(1)
    bar.close()
    return {"images": len(files), "written": len(todo), "skipped": len(files) - len(todo), "out": str(out)}
