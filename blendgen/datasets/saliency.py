"""Salient object detection datasets as they ship (DUTS, ECSSD, image + mask folders), with pseudo
semantic labels for pairing (kind ``saliency``; IJCV Sect. 4.5, Table 7).

DUT-S has no semantic labels, so the paper runs a VOC-trained DeepLabv3 over its images and uses the
predicted classes as image-level class sets for co-occurrence pairing, while the training target
stays the binary saliency mask. Here that is two label spaces on one reader:

* the **pairing labels** (``reader.classes``, ``read_label``): the pseudo-label PNGs and their class
  set (``PSEUDO/classes.json``), what ``build-clusters`` reads to make the class sets, the
  co-occurrence matrix and the clusters, unchanged from the segmentation pipeline;
* the **target** (``read_mask``): the binary mask, class set :data:`SALIENCY` (0 background,
  1 salient), what the shards store as ``label``.

:mod:`blendgen.generation.saliency` writes the shards from both (docs/saliency.md).

Layouts (``layout=`` option; detected when not given):

``duts``     ``ROOT/DUTS-TR-Image/*.jpg`` and ``ROOT/DUTS-TR-Mask/*.png`` (DUTS-TE likewise)
``ecssd``    ``ROOT/images/*.jpg`` and ``ROOT/ground_truth_mask/*.png``
``folder``   ``ROOT/images/*`` and ``ROOT/masks/*.png`` (``images=`` / ``masks=`` rename them)

Masks are 8-bit grey PNGs of 0/255 (binarised at 128: anti-aliased edges go to the nearer side) or
0/1; a mask whose brightest value lies in 2..127 is neither (a class-id map, say) and is refused
with one line, as are colour and 16-bit masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .base import Reader
from .classes import ClassSet
from .files import DatasetError

SALIENCY = ClassSet(names=("background", "salient"))
PSEUDO_CLASSES = "classes.json"  # the pseudo labels' class set, beside their PNGs
MASK_THRESHOLD = 128
LAYOUTS = ("duts", "ecssd", "folder")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# -- masks ----------------------------------------------------------------------------------------
def read_mask(path: Path) -> np.ndarray:
    """A saliency mask as (H, W) uint8 0 / 1 (see the module docstring for what is accepted)."""
    grey = _grey_pixels(path)
    top = int(grey.max()) if grey.size else 0
    if top <= 1:
        return grey  # already 0 / 1
    if top < MASK_THRESHOLD:
        raise DatasetError(f"{path}: mask values reach only {top}: neither a 0/255 nor a 0/1 mask "
                           f"(a class-id map?)")
    return (grey >= MASK_THRESHOLD).astype(np.uint8)


def _grey_pixels(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: missing mask")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "1":
                return np.array(im.convert("L"))
            if mode in ("L", "P"):  # a palette mask: its indices, as label PNGs are read
                return np.array(im)
            if mode in ("RGB", "RGBA", "LA"):
                pixels = np.array(im)
                colour = pixels[..., :1] if mode == "LA" else pixels[..., :3]
                if (colour != colour[..., :1]).any():
                    raise DatasetError(f"{path}: colour mask (mode {mode} with unequal channels); expected grey 0/255")
                return np.ascontiguousarray(colour[..., 0])
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises several types for corrupt files
        raise DatasetError(f"{path}: unreadable mask ({exc.__class__.__name__}: {exc})") from None
    raise DatasetError(f"{path}: mask of mode {mode}; expected an 8-bit grey PNG of 0/255 or 0/1")


# -- the reader -----------------------------------------------------------------------------------
def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    files: dict[str, str] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file():
            if p.stem in files:
                raise DatasetError(f"{p}: second file named {p.stem!r} (also {files[p.stem]})")
            files[p.stem] = p.name
    return files


def detect_layout(root: Path, split: str) -> tuple[str, Path, Path]:
    """(layout, image folder, mask folder) of a saliency dataset root."""
    duts = sorted(p for p in root.glob("*-Image") if p.is_dir() and (root / (p.name[:-6] + "-Mask")).is_dir())
    if duts:
        if len(duts) > 1:  # DUTS-TR and DUTS-TE side by side: the split picks one
            tag = {"train": "-TR-", "test": "-TE-", "val": "-TE-"}.get(split, f"-{split.upper()}-")
            duts = [p for p in duts if tag in p.name + "-"] or duts
            if len(duts) > 1:
                raise DatasetError(f"{root}: several image folders ({', '.join(p.name for p in duts)}); "
                                   f"point --root at one of them or give split train / test")
        return "duts", duts[0], root / (duts[0].name[:-6] + "-Mask")
    if (root / "images").is_dir() and (root / "ground_truth_mask").is_dir():
        return "ecssd", root / "images", root / "ground_truth_mask"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder", root / "images", root / "masks"
    raise DatasetError(f"{root}: not a saliency dataset (expected DUTS-TR-Image/ + DUTS-TR-Mask/, "
                       f"images/ + ground_truth_mask/ (ECSSD), or images/ + masks/)")


def _layout_dirs(root: Path, split: str, layout: str | None, images: str | None, masks: str | None):
    if layout is not None and layout not in LAYOUTS:
        raise DatasetError(f"{root}: unknown saliency layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if images or masks:  # named folders (a plain image + mask folder under other names)
        return layout or "folder", root / (images or "images"), root / (masks or "masks")
    found = detect_layout(root, split)
    if layout is not None and found[0] != layout:
        raise DatasetError(f"{root}: looks like layout {found[0]}, not {layout}")
    return found


class SaliencyReader(Reader):
    """A saliency dataset: images, binary masks and, with ``pseudo_labels``, pseudo semantic labels.

    ``classes`` / ``label_path`` / ``read_label`` are the pairing labels: the pseudo labels with
    their class set when ``pseudo_labels`` is given, else the mask itself as a two-class map.
    ``read_mask`` / ``read_target_pair`` give the training target. ``pseudo_labels`` is a folder
    path (relative to the working directory; recorded absolute) holding ``ID.png`` for every
    image and ``classes.json`` (``blendgen pseudo-label`` writes both)."""

    target_classes = SALIENCY

    def __init__(self, root: str | Path, split: str = "train", layout: str | None = None, images: str | None = None,
                 masks: str | None = None, pseudo_labels: str | Path | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root is not a directory")
        self.split = split
        self.layout, self.image_dir, self.mask_dir = _layout_dirs(self.root, split, layout, images, masks)
        for folder, what in ((self.image_dir, "image"), (self.mask_dir, "mask")):
            if not folder.is_dir():
                raise DatasetError(f"{folder}: missing {what} folder")
        self._images = _files_by_stem(self.image_dir, _IMAGE_SUFFIXES)
        self._masks = _files_by_stem(self.mask_dir, (".png",))
        _check_pairs(self._images, self._masks, self.image_dir, self.mask_dir)
        self._ids = sorted(self._images)
        self.pseudo_dir = None if pseudo_labels is None else Path(pseudo_labels).resolve()
        self.classes = SALIENCY if self.pseudo_dir is None else pseudo_classes(self.pseudo_dir)
        if self.pseudo_dir is not None:
            _check_pseudo_labels(self._ids, self.pseudo_dir)
        options = {k: v for k, v in (("layout", layout), ("images", images), ("masks", masks)) if v is not None}
        if self.pseudo_dir is not None:
            options["pseudo_labels"] = str(self.pseudo_dir)
        self.description = {"kind": "saliency", "root": str(self.root.resolve()), "split": split,
                            "layout": self.layout, "images": str(self.image_dir.resolve()),
                            "masks": str(self.mask_dir.resolve()), "options": options}

    def ids(self) -> list[str]:
        return list(self._ids)

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self._images.get(image_id, f"{image_id}.jpg")

    def mask_path(self, image_id: str) -> Path:
        return self.mask_dir / self._masks.get(image_id, f"{image_id}.png")

    def label_path(self, image_id: str) -> Path:
        if self.pseudo_dir is None:
            return self.mask_path(image_id)
        return self.pseudo_dir / f"{image_id}.png"

    def read_label(self, image_id: str) -> np.ndarray:
        if self.pseudo_dir is None:
            return self.read_mask(image_id)
        return super().read_label(image_id)

    def read_mask(self, image_id: str) -> np.ndarray:
        """(H, W) uint8: 0 background, 1 salient."""
        return read_mask(self.mask_path(image_id))

    def read_target_pair(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask, checked to be the same size."""
        image, mask = self.read_image(image_id), self.read_mask(image_id)
        if image.shape[:2] != mask.shape:
            raise DatasetError(f"{self.mask_path(image_id)}: mask is {mask.shape[1]}x{mask.shape[0]} but image "
                               f"{self.image_path(image_id).name} is {image.shape[1]}x{image.shape[0]}")
        return image, mask


def _check_pairs(images: dict, masks: dict, image_dir: Path, mask_dir: Path) -> None:
    if not images:
        raise DatasetError(f"{image_dir}: no images (.jpg, .jpeg, .png)")
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        more = f" (and {len(no_mask) - 1} more images without masks)" if len(no_mask) > 1 else ""
        raise DatasetError(f"{image_dir / images[no_mask[0]]}: no mask {mask_dir / (no_mask[0] + '.png')}{more}")
    no_image = sorted(set(masks) - set(images))
    if no_image:
        more = f" (and {len(no_image) - 1} more masks without images)" if len(no_image) > 1 else ""
        raise DatasetError(f"{mask_dir / masks[no_image[0]]}: mask without an image in {image_dir}{more}")


def pseudo_classes(folder: Path) -> ClassSet:
    """The class set of a pseudo-label folder, from its ``classes.json``."""
    path = folder / PSEUDO_CLASSES
    if not path.is_file():
        raise DatasetError(f"{path}: missing; pseudo labels come with their class set (run blendgen pseudo-label)")
    try:
        return ClassSet.from_json(json.loads(path.read_text())["classes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a pseudo-label class file ({exc.__class__.__name__}: {exc})") from None


def _check_pseudo_labels(ids: list[str], folder: Path) -> None:
    have = {p.stem for p in folder.glob("*.png") if not p.name.startswith(".")}
    missing = [i for i in ids if i not in have]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{folder / (missing[0] + '.png')}: missing pseudo label{more}; "
                           f"run blendgen pseudo-label again (it resumes)")


KINDS = {"saliency": SaliencyReader}
