"""Readers of labelled segmentation datasets behind one small interface.

Every reader gives the same things for an image id: the RGB image, the uint8 label map
(class ids of its :class:`~blendgen.classes.ClassSet`, 255 = ignore), the image size without
decoding pixels, and, where the dataset has them, per-object annotations (instance count and
VOC ``occluded`` flags) that the papers' evaluation subsets need.

Kinds (see :data:`READERS`): ``voc`` and ``voc-aug`` (PASCAL VOC 2012 and its SBD-augmented
training set, or any dataset in that layout with its own class list), ``coco`` (MS-COCO
instance annotations, converted once to semantic label PNGs) and ``folder`` (a plain folder
of images, id masks and a class-names file, with split folders or split lists). The VOC and
folder readers take a label id map (``label_map=``) for datasets whose files hold other ids
than the ones trained on (Cityscapes labelIds, ADE20K's 0 = "other"). docs/datasets.md has
one command per dataset family.

Readers hold only paths and small tables, so they pickle cheaply into worker processes.
Bad input raises :class:`DatasetError` with one line naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib

import inspect
import json
import os
import re
import threading
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .classes import COCO, COCO_CLASSES, IGNORE_INDEX, NAMED_LABEL_MAPS, VOC, VOC_CLASSES, ClassSet, voc_palette


class DatasetError(ValueError):
    """Bad input data; the message is one line naming the file and the problem.

    Line breaks in the message (from wrapped library errors) are folded into spaces, so
    that logs and the command line always show one line per problem.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


@dataclass(frozen=True)
class ObjectInfo:
    """One annotated object instance (a VOC XML ``<object>``, a non-crowd COCO annotation)."""

    name: str
    occluded: bool
    # xmin, ymin, xmax, ymax. VOC: as in the XML, 1-based and inclusive. COCO: 0-based pixel
    # edges, the json's float box rounded outwards.
    bbox: tuple[int, int, int, int]


class Reader:
    """Base class: subclasses set ``classes``, ``description`` and implement the paths."""

    classes: ClassSet
    description: dict  # JSON-able: kind, root, split, ... recorded in every output
    # (256,) uint8 lookup table applied to every label map as read (``label_map=``), or None
    label_lut: np.ndarray | None = None

    def ids(self) -> list[str]:
        raise NotImplementedError

    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def label_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def objects(self, image_id: str) -> list[ObjectInfo] | None:
        """Per-object annotations, or None where the dataset has none."""
        return None

    # -- shared reading, with the checks every dataset needs ---------------------------------
    def read_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return read_rgb(self.image_path(image_id))

    def read_label(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 class ids (after the label map, if any), checked against the class set."""
        path = self.label_path(image_id)
        label = read_label_png(path)
        if self.label_lut is not None:
            label = self.label_lut[label]
        check_label_values(np.bincount(label.ravel(), minlength=256), self.classes, path)
        return label

    def label_histogram(self, image_id: str) -> tuple[np.ndarray, tuple[int, int]]:
        """(256-bin histogram of the class ids, (H, W)), the label map applied to the counts
        rather than to pixels; values are not checked here (see :func:`check_label_values`)."""
        hist, size = read_label_histogram(self.label_path(image_id))
        if self.label_lut is not None:
            hist = np.bincount(self.label_lut, weights=hist, minlength=256).astype(np.int64)
        return hist, size

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(H, W) of the image, from its header only."""
        return header_size(self.image_path(image_id))

    def read_pair(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Image and label, checked to be the same size."""
        image, label = self.read_image(image_id), self.read_label(image_id)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{self.label_path(image_id)}: label is {label.shape[1]}x{label.shape[0]} but image "
                f"{self.image_path(image_id).name} is {image.shape[1]}x{image.shape[0]}"
            )
        return image, label


# -- file-level helpers ----------------------------------------------------------------------
def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise DatasetError(f"{path}: missing {what}")


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"


def _read_text(path: Path, what: str) -> str:
    _require(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable {what} ({_describe(exc)})") from None


def _numbered_lines(path: Path, what: str) -> list[str]:
    """Lines of a file where line ``i`` describes id ``i``: trailing blank lines are dropped,
    a blank line inside would shift every later id and is an error."""
    lines = [line.strip() for line in _read_text(path, what).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DatasetError(f"{path}: {what} is empty")
    if "" in lines:
        raise DatasetError(f"{path}: line {lines.index('') + 1} of the {what} is blank (line i names id i-1)")
    return lines


# Images over this many pixels are refused from their header, before anything is decoded: a
# 9-KB JPEG can claim 30000x30000, and decoding it takes tens of GB. 100 Mpx is above what
# cameras and phones save (12 to 50 Mpx) and below PIL's own refusal at 179 Mpx. Commands that
# decode user images take --max-pixels to change it; None = no limit of ours.
MAX_PIXELS = 100_000_000

_PIL_LIMIT = threading.Lock()  # Image.MAX_IMAGE_PIXELS is global: lifted for one open at a time


def read_rgb(path: Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    _require(path, "image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable image ({_describe(exc)})") from None
    header_size(path, max_pixels, data)  # a decompression bomb is refused before it is decoded
    if jpeg_truncated(data):
        raise DatasetError(f"{path}: truncated JPEG (no end-of-image marker)")
    if data.startswith(b"\xff\xd8") and (problem := jpeg_damage(data)):
        raise DatasetError(f"{path}: corrupt JPEG ({problem})")
    # EXIF orientation is ignored so that the decoded size matches the header size that
    # image_size() reports and the size the annotations were drawn on.
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise DatasetError(f"{path}: unreadable image (not a JPEG/PNG that OpenCV can decode)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def jpeg_damage(data: bytes) -> str | None:
    """libjpeg's warning for a JPEG whose compressed data is damaged but decodable ("Corrupt
    JPEG data: ...", "Premature end of JPEG file"), None for a clean one. OpenCV prints such
    warnings to stderr and returns an image anyway; simplejpeg's strict mode raises them.
    Decoding at 1/8 scale still entropy-decodes every block, which is where damage shows, at
    a fraction of a full decode's cost (docs/storage.md)."""
    try:
        import simplejpeg
    except ImportError:  # declared dependency; without it damaged-but-decodable JPEGs pass
        return None
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as exc:
        text = " ".join(str(exc).split())
        if "color" in text.lower() or "colorspace" in text.lower():
            return None  # e.g. CMYK: a conversion simplejpeg lacks, not damage; OpenCV decodes it
        return text
    return None


def jpeg_truncated(data: bytes) -> bool:
    """True when a JPEG stream stops before its end-of-image marker, as a cut-off download
    does. OpenCV decodes such files without an error, filling the missing rows with grey,
    so the cut has to be found here.

    The header segments are skipped by their lengths (an EXIF thumbnail inside them has its
    own end marker), then the end marker must follow the first scan. Data other than JPEG
    gives False: the decoder judges it.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False  # malformed header: let the decoder report it
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xDA:  # start of scan: compressed data runs to the end marker
            return data.find(b"\xff\xd9", pos) < 0
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length field
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return True  # the file ends inside the header


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as uint8 ids. Palette PNGs give their indices (VOC ``SegmentationClass``),
    grayscale PNGs their values (SBD-aug, COCO conversions, folders). OpenCV would expand a
    palette to colours, so labels go through Pillow."""
    with _open_label(path) as im:
        return np.array(im)  # a writable copy; np.asarray would give a read-only view


def read_label_histogram(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """(256-bin histogram of the label ids, (H, W)) without building a numpy array: Pillow
    counts the decoded pixels in C, which is all ``build-clusters`` needs."""
    with _open_label(path) as im:
        return np.asarray(im.histogram(), dtype=np.int64), (im.height, im.width)


@contextlib.contextmanager
def _open_label(path: Path):
    _require(path, "label")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(f"{path}: label must be a palette or 8-bit grayscale PNG, got mode {im.mode}")
            im.load()
            yield im
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises several types for corrupt files
        raise DatasetError(f"{path}: unreadable label ({_describe(exc)})") from None


def header_size(path: Path, max_pixels: int | None = MAX_PIXELS, data: bytes | None = None,
                hint: str = "") -> tuple[int, int]:
    """(H, W) from the image header alone (PIL's lazy open decodes no pixels), of the file
    ``path`` or of its bytes ``data`` already read. DatasetError naming the file when it is
    unreadable or has more than ``max_pixels`` pixels (``hint`` says how to allow it)."""
    if data is None:
        _require(path, "image")
    try:
        try:
            w, h = _pil_size(path, data)
        except Image.DecompressionBombError as exc:
            # PIL refuses above 2 x MAX_IMAGE_PIXELS before telling the size; ours may be higher
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = int(found.group(1)) if found else None
            if max_pixels is not None and (pixels is None or pixels > max_pixels):
                raise DatasetError(f"{path}: image of {_mpx(pixels)} Mpx, over the limit of {_mpx(max_pixels)} Mpx; "
                                   f"not decoded{hint}") from None
            with _PIL_LIMIT:
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    w, h = _pil_size(path, data)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except DatasetError:
        raise
    except Image.UnidentifiedImageError as exc:
        # PIL names a memory buffer by its object address: say what it means instead
        reason = _describe(exc) if data is None else "not an image format PIL knows"
        raise DatasetError(f"{path}: unreadable image ({reason})") from None
    except Exception as exc:
        raise DatasetError(f"{path}: unreadable image ({_describe(exc)})") from None
    if max_pixels is not None and w * h > max_pixels:
        raise DatasetError(f"{path}: image of {w}x{h} = {_mpx(w * h)} Mpx, over the limit of {_mpx(max_pixels)} Mpx; "
                           f"not decoded{hint}")
    return h, w


def _pil_size(path: Path, data: bytes | None) -> tuple[int, int]:
    import io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is ours to apply
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            return im.size


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are not frames
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def encoded_size(data: bytes) -> tuple[int, int] | None:
    """(W, H) read straight from a PNG's IHDR or a JPEG's start-of-frame segment, or None for
    anything else: what the shards hold, in ~1/20 of the time of PIL's lazy open (the trainer's
    shard reader checks every sample it reads, :func:`blendgen.shards.size_problem`)."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None  # not at a marker: leave the odd file to PIL
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker in _JPEG_FRAMES:  # FF Cn, length (2), precision (1), height (2), width (2)
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _mpx(pixels: int | None) -> str:
    return "?" if pixels is None else f"{pixels / 1e6:.1f}".removesuffix(".0")


def check_label_values(hist: np.ndarray, classes: ClassSet, path: Path) -> None:
    """``hist``: 256-bin histogram of a label map. Values beyond the class set, other than the
    ignore index, are an error."""
    bad = np.flatnonzero(hist[classes.num_classes:])
    bad = bad + classes.num_classes
    bad = bad[bad != classes.ignore_index]
    if bad.size:
        raise DatasetError(
            f"{path}: label values {bad[:5].tolist()} outside the class set 0..{classes.num_classes - 1}"
            f" (and {classes.ignore_index} = ignore)"
        )


def read_id_list(path: Path) -> list[str]:
    """The ids of an image-set list, one per line; an id listed twice is an error naming both
    lines (it would give two samples one key in every shard made from the list)."""
    text = _read_text(path, "image-set list")
    # VOC's per-class lists hold "id flag"; the id is the first word.
    numbered = [(n, line.split()[0]) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise DatasetError(f"{path}: image-set list is empty")
    first: dict[str, int] = {}
    for n, image_id in numbered:
        if image_id in first:
            raise DatasetError(f"{path}: id {image_id!r} is listed twice (lines {first[image_id]} and {n})")
        first[image_id] = n
    return [image_id for _, image_id in numbered]


def write_label_png(path: Path, label: np.ndarray) -> None:
    """Write a grayscale label PNG atomically: a temporary name unique to this process and
    thread, then a rename. Readers in other processes see the old state or the whole new
    file, and two workers converting the same image cannot corrupt it."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.png")
    try:
        if not cv2.imwrite(str(tmp), label):
            raise OSError("OpenCV could not write the PNG")
        os.replace(tmp, path)
    except (OSError, cv2.error) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{path}: cannot write label ({_describe(exc)})") from None


# -- PASCAL VOC 2012 ------------------------------------------------------------------------
class VOCReader(Reader):
    """PASCAL VOC 2012 layout under ``root`` (the ``VOC2012`` folder itself):
    ``JPEGImages/ID.jpg``, ``SegmentationClass/ID.png`` (palette PNG),
    ``Annotations/ID.xml``, ``ImageSets/Segmentation/{split}.txt``.

    ``aug=True`` reads the SBD-augmented variant researchers use for training:
    ``SegmentationClassAug/ID.png`` (grayscale) listed by ``ImageSets/Segmentation/train_aug.txt``
    (or ``{split}.txt`` in that folder for other splits).

    Files are checked when read, not when the reader opens (a stat per image of a 10k list
    on a network disk is slow): an id without its JPEG fails in ``read_image``.

    Other datasets in this layout (a street-scene set with its own 11 classes, say) name
    their classes with the folder reader's options: ``classes_file=`` (line i names id i-1),
    ``background=``, ``palette_file=``, and ``label_map=`` (see :func:`label_map_table`).
    Without ``classes_file`` the class set is VOC's 21 names, and a ``classes.txt`` in the
    root that names other classes is refused: reading such a set as VOC would silently turn
    its id 0 into "background" and its classes into aeroplane, bicycle, ...
    """

    def __init__(self, root: str | Path, split: str = "train", aug: bool = False,
                 classes_file: str | Path | None = None, background: str | None = None,
                 palette_file: str | Path | None = None, label_map: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root is not a directory")
        self.split = split
        self.aug = aug
        kind = "voc-aug" if aug else "voc"
        palette_path = _palette_path(self.root, palette_file)
        if classes_file is None and background is None and palette_path is None:
            self.classes = VOC
        elif classes_file is None:  # VOC's names with another background or palette
            self.classes = _class_set(VOC_CLASSES, background, palette_path, self.root / "classes.txt")
        else:
            self.classes = _classes_from_file(self.root / classes_file, background, palette_path)
        check_root_class_names(self.root, self.classes, None if classes_file is None else self.root / classes_file,
                               kind)
        self.label_lut = label_map_table(label_map, self.root, self.classes)
        self._label_dir = self.root / ("SegmentationClassAug" if aug else "SegmentationClass")
        list_name = "train_aug.txt" if aug and split == "train" else f"{split}.txt"
        self._list = self.root / "ImageSets" / "Segmentation" / list_name
        if aug and not self._list.is_file() and (self.root / list_name).is_file():
            self._list = self.root / list_name  # some SBD-aug packages keep the list at the root
        self._ids = read_id_list(self._list)
        self.description = {
            "kind": kind,
            "root": str(self.root.resolve()),
            "split": split,
            "list": str(self._list.resolve()),
            "options": _given_options(classes_file=classes_file, background=background, palette_file=palette_file,
                                      label_map=label_map),
        }

    def ids(self) -> list[str]:
        return list(self._ids)

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def label_path(self, image_id: str) -> Path:
        return self._label_dir / f"{image_id}.png"

    def objects(self, image_id: str) -> list[ObjectInfo] | None:
        path = self.root / "Annotations" / f"{image_id}.xml"
        if not path.is_file():
            return None
        return parse_voc_xml(path)


def parse_voc_xml(path: Path) -> list[ObjectInfo]:
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as exc:
        raise DatasetError(f"{path}: unreadable annotation XML ({_describe(exc)})") from None
    objects = []
    for obj in tree.getroot().iter("object"):
        objects.append(ObjectInfo(
            name=(obj.findtext("name") or "").strip(),
            occluded=(obj.findtext("occluded") or "0").strip() == "1",
            bbox=_voc_box(obj.find("bndbox"), path),
        ))
    return objects


def _voc_box(box: ET.Element | None, path: Path) -> tuple[int, int, int, int]:
    if box is None:
        return (0, 0, 0, 0)
    try:
        # Some VOC-style exports write "12.0"; int("12.0") would refuse it.
        return tuple(int(float(box.findtext(k, "0"))) for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError as exc:
        raise DatasetError(f"{path}: bad <bndbox> coordinate ({exc})") from None


# -- MS-COCO instances, converted to semantic labels ----------------------------------------
# Bump when the conversion or the cache layout changes: caches written before then count as
# stale and are rebuilt.
COCO_CACHE_FORMAT = 1

# One row per annotation, rows of an image contiguous and in json order. ``rle_start`` and
# ``rle_end`` delimit the annotation's compressed RLE string in the cache's byte blob.
_COCO_ANN_DTYPE = np.dtype([
    ("label", np.uint8),  # contiguous class id, 1..K
    ("crowd", np.bool_),
    ("area", np.int64),  # pixels of the mask, which decides the paint order
    ("bbox", np.float32, (4,)),  # xmin, ymin, xmax, ymax (0-based pixel edges)
    ("rle_start", np.int64),
    ("rle_end", np.int64),
])

_STAMP, _INDEX, _TABLE, _BLOB = "stamp.json", "index.json", "annotations.npy", "rle.npy"


class COCOReader(Reader):
    """MS-COCO instance annotations as researchers download them:
    ``root/annotations/instances_{split}2017.json`` and ``root/{split}2017/*.jpg``.

    ``split`` is ``train``/``val`` or the full folder name (``train2017``, ``val2014``).
    Options (relative paths are taken from ``root``; ``{split}`` in a path stands for the
    full split name, so recorded options reopen other splits too): ``annotations=`` the
    json, ``images=`` the image folder, ``cache_dir=`` the cache root (default
    ``root/semantic_cache``). Label PNGs go to ``cache_dir/{split}2017/``, a folder that
    belongs to the reader: it deletes the PNGs there when they are stale.

    Label maps: categories map to contiguous ids 1..K in order of category id (the standard
    80 give :data:`blendgen.classes.COCO`; other category lists give a class set of their
    own), background 0, crowd regions 255. :func:`paint_coco_label` gives the paint order.
    ``ids()`` are the file stems of *all* images in the json, in json order; images without
    annotations are all background, as VOC keeps images without objects. ``objects()`` lists
    the non-crowd annotations (COCO has no occlusion flag, so ``occluded`` is False).

    Cost and caching: the train2017 json is 450 MB and takes tens of seconds to parse, so
    it is parsed only when the cache is stale. Then every annotation becomes one compressed
    RLE, stored with a small per-annotation table as ``.npy`` files in the cache dir, and
    ``stamp.json`` (json name, size, mtime, image count) is written last. A later reader
    with a matching stamp loads only ``index.json`` (ids, file names, sizes).

    Label PNGs are painted lazily, one image at a time on its first ``label_path()``, and
    written atomically, so worker processes of ``build-clusters --workers N`` convert in
    parallel on the first run and find the PNGs on later runs. Workers get the reader
    pickled with its small index only; each maps the RLE files read-only (``np.load(...,
    mmap_mode="r")``) on its first conversion, so neither the json nor the segmentations are
    copied into each process.
    """

    def __init__(self, root: str | Path, split: str = "train", annotations: str | Path | None = None,
                 images: str | Path | None = None, cache_dir: str | Path | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root is not a directory")
        self.split = coco_split_name(split)
        self.annotation_file = self._option_path(annotations, "annotations/instances_{split}.json")
        self.image_dir = self._option_path(images, "{split}")
        # One subfolder per split, so splits sharing a cache root never evict each other.
        self.cache_dir = self._option_path(cache_dir, "semantic_cache") / self.split
        _require(self.annotation_file, "COCO annotation file")

        index = self._load_fresh_index()
        if index is None:
            index = self._rebuild_cache()
        self.classes = ClassSet.from_json(index["classes"])
        self._ids = [image[0] for image in index["images"]]
        self._files = [image[1] for image in index["images"]]
        self._sizes = np.array([image[2:4] for image in index["images"]], dtype=np.int32).reshape(-1, 2)
        self._ranges = np.array([image[4:6] for image in index["images"]], dtype=np.int64).reshape(-1, 2)
        self._index_rows()
        self.description = {
            "kind": "coco",
            "root": str(self.root.resolve()),
            "split": self.split,
            "annotations": str(self.annotation_file.resolve()),
            "images": str(self.image_dir.resolve()),
            "cache_dir": str(self.cache_dir.resolve()),
            "options": _given_options(annotations=annotations, images=images, cache_dir=cache_dir),
        }

    def __getstate__(self) -> dict:
        # Memory maps would pickle as full copies; each process maps the files itself. The
        # id -> row map is rebuilt rather than shipped, which keeps the pickle small.
        return {k: v for k, v in self.__dict__.items() if k not in ("_row", "_table", "_blob")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._index_rows()

    def _option_path(self, value: str | Path | None, default: str) -> Path:
        return self.root / str(value or default).replace("{split}", self.split)

    def _index_rows(self) -> None:
        self._row = {image_id: row for row, image_id in enumerate(self._ids)}
        self._table = self._blob = None  # mapped on first use, in each process

    def ids(self) -> list[str]:
        return list(self._ids)

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self._files[self._row_of(image_id)]

    def label_path(self, image_id: str) -> Path:
        """The cached label PNG, painted and written first if it is not there yet."""
        row = self._row_of(image_id)
        path = self.cache_dir / f"{image_id}.png"
        if not path.is_file():
            write_label_png(path, self._paint(row))
        return path

    def objects(self, image_id: str) -> list[ObjectInfo]:
        start, end = self._ranges[self._row_of(image_id)]
        return [
            ObjectInfo(name=self.classes.names[ann["label"]], occluded=False, bbox=_outward_box(ann["bbox"]))
            for ann in self._annotation_table()[start:end]
            if not ann["crowd"]
        ]

    # -- internals ---------------------------------------------------------------------------
    def _row_of(self, image_id: str) -> int:
        try:
            return self._row[image_id]
        except KeyError:
            raise DatasetError(f"{self.annotation_file}: no image with id {image_id!r}") from None

    def _paint(self, row: int) -> np.ndarray:
        start, end = self._ranges[row]
        height, width = self._sizes[row]
        anns, blob = self._annotation_table()[start:end], self._rle_blob()
        try:
            return paint_coco_label(int(height), int(width), anns, blob, self.classes.ignore_index)
        except ValueError as exc:  # pycocotools refuses an RLE that does not fit the image
            raise DatasetError(f"{self.annotation_file}: bad segmentation for image {self._ids[row]!r} ({exc})") from None

    def _annotation_table(self) -> np.ndarray:
        if self._table is None:
            self._table = self._map_cache_file(_TABLE)
        return self._table

    def _rle_blob(self) -> np.ndarray:
        if self._blob is None:
            self._blob = self._map_cache_file(_BLOB)
        return self._blob

    def _map_cache_file(self, name: str) -> np.ndarray:
        path = self.cache_dir / name
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: unreadable label cache ({_describe(exc)}); open the dataset again to rebuild it") from None

    def _current_stamp(self, num_images: int | None) -> dict:
        stat = self.annotation_file.stat()
        # The json's name, not its full path: moving a dataset must not invalidate its cache,
        # but two splits sharing one cache_dir must.
        return {"format": COCO_CACHE_FORMAT, "annotations": self.annotation_file.name,
                "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "images": num_images}

    def _load_fresh_index(self) -> dict | None:
        """The cached index if the stamp matches the json and the cache files are whole,
        else None (anything unreadable just means: rebuild)."""
        try:
            stamp = json.loads((self.cache_dir / _STAMP).read_text())
            index = json.loads((self.cache_dir / _INDEX).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(index, dict):
            return None
        expected = self._current_stamp(len(index.get("images", ())))
        files_present = all((self.cache_dir / name).is_file() for name in (_TABLE, _BLOB))
        return index if stamp == expected and files_present else None

    def _rebuild_cache(self) -> dict:
        """Parse the json, store its annotations as RLEs, drop label PNGs painted from an
        older json. The stamp goes last, so an interrupted rebuild is redone next time."""
        parsed = parse_coco_json(self.annotation_file)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            (self.cache_dir / _STAMP).unlink(missing_ok=True)
            for old in self.cache_dir.glob("*.png"):
                old.unlink()
            _save_npy_atomic(self.cache_dir / _TABLE, parsed.table)
            _save_npy_atomic(self.cache_dir / _BLOB, parsed.blob)
            _write_text_atomic(self.cache_dir / _INDEX, json.dumps(parsed.index))
            _write_text_atomic(self.cache_dir / _STAMP, json.dumps(self._current_stamp(len(parsed.index["images"]))))
        except OSError as exc:
            raise DatasetError(f"{self.cache_dir}: cannot write the label cache ({_describe(exc)})") from None
        return parsed.index


def coco_masks():
    """pycocotools' mask module, imported only where COCO is read: every other layout works on a
    machine without it (e.g. a GPU image that ships torch but not pycocotools)."""
    try:
        from pycocotools import mask
    except ImportError:
        raise DatasetError("COCO: reading COCO annotations needs pycocotools (pip install pycocotools)") from None
    return mask


def coco_split_name(split: str) -> str:
    """``train`` -> ``train2017``; names that carry a year (``val2014``) are kept."""
    return split if re.search(r"\d{4}$", split) else f"{split}2017"


def paint_coco_label(height: int, width: int, anns: np.ndarray, blob: np.ndarray, ignore: int) -> np.ndarray:
    """The semantic label map of one image from its annotation rows.

    Overlaps are settled by paint order, later on top: crowd regions first (as ``ignore``),
    then objects from the largest mask area to the smallest, ties in json order. A small
    object lying on a larger one (a cup on a table, a person before a bus) so stays visible
    instead of disappearing under it, and a person annotated on their own inside a crowd
    region keeps the class; only the unresolved rest of the crowd is ignored.
    """
    masks = coco_masks()
    label = np.zeros((height, width), dtype=np.uint8)
    if len(anns) == 0:
        return label
    anns = anns[np.lexsort((-anns["area"], ~anns["crowd"]))]  # stable; the last key sorts first
    with warnings.catch_warnings():
        # pycocotools' decoder predates numpy 2's __array__(copy=...) protocol; numpy falls
        # back to the old call, which works, and warns about it on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        for ann in anns:  # one mask at a time: a crowded large image needs no (H, W, N) stack
            rle = {"size": [height, width], "counts": blob[ann["rle_start"]:ann["rle_end"]].tobytes()}
            label[masks.decode(rle) != 0] = ignore if ann["crowd"] else ann["label"]
    return label


@dataclass
class ParsedCOCO:
    index: dict  # JSON-able: {"classes": ClassSet json, "images": [[id, file, h, w, start, end]]}
    table: np.ndarray  # _COCO_ANN_DTYPE rows
    blob: np.ndarray  # uint8: the compressed RLE strings, back to back


def parse_coco_json(path: Path) -> ParsedCOCO:
    """Read a COCO instances json into the compact form the cache stores."""
    data = _load_json(path)
    try:
        classes, label_of_category = coco_classes(data["categories"], path)
        images, row_of_coco_id = _coco_images(data["images"], path)
        if not images:
            raise DatasetError(f"{path}: lists no images")
        per_image = [[] for _ in images]
        for ann in data["annotations"]:
            row = row_of_coco_id.get(ann["image_id"])
            if row is None:
                raise DatasetError(f"{path}: annotation {ann.get('id')} refers to unknown image id {ann['image_id']}")
            label = label_of_category.get(ann["category_id"])
            if label is None:
                raise DatasetError(f"{path}: annotation {ann.get('id')} has unknown category id {ann['category_id']}")
            per_image[row].append((label, ann, _segmentation_rle(ann["segmentation"], *images[row][2:4])))
    except DatasetError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DatasetError(f"{path}: malformed COCO annotations ({_describe(exc)})") from None
    return _pack_annotations(classes, images, per_image)


def _load_json(path: Path) -> dict:
    _require(path, "COCO annotation file")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DatasetError(f"{path}: unreadable COCO annotations ({_describe(exc)})") from None
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise DatasetError(f"{path}: not a COCO instances file (needs 'images', 'annotations' and 'categories')")
    return data


def coco_classes(categories: list[dict], path: Path) -> tuple[ClassSet, dict[int, int]]:
    """The class set and the map category id -> contiguous label id (1.., by category id)."""
    categories = sorted(categories, key=lambda c: c["id"])
    category_ids = [c["id"] for c in categories]
    if len(set(category_ids)) != len(category_ids):
        raise DatasetError(f"{path}: category ids are not unique")
    names = tuple(str(c["name"]) for c in categories)
    if names == COCO_CLASSES:
        classes = COCO
    else:
        try:
            classes = ClassSet(names=("background",) + names)
        except ValueError as exc:
            raise DatasetError(f"{path}: categories do not form a label space ({exc})") from None
    return classes, {cid: i + 1 for i, cid in enumerate(category_ids)}


def _coco_images(images: list[dict], path: Path) -> tuple[list[list], dict[int, int]]:
    """``[id, file_name, height, width]`` per image in json order (id = file stem), and the
    map json image id -> row."""
    rows, row_of_coco_id, seen = [], {}, set()
    for image in images:
        file_name = str(image["file_name"])
        stem = Path(file_name).stem
        if stem in seen:
            raise DatasetError(f"{path}: two images named {stem!r}")
        seen.add(stem)
        row_of_coco_id[image["id"]] = len(rows)
        rows.append([stem, file_name, int(image["height"]), int(image["width"])])
    return rows, row_of_coco_id


def _segmentation_rle(segmentation, height: int, width: int) -> dict:
    """One compressed RLE for any of COCO's segmentation forms: polygons, uncompressed RLE
    (crowd annotations) or compressed RLE."""
    masks = coco_masks()
    if isinstance(segmentation, list):
        # Fewer than 3 points enclose nothing; pycocotools would also take a first polygon
        # of exactly 4 numbers for a box.
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return masks.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        return masks.merge(masks.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict):
        if [int(s) for s in segmentation["size"]] != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} differs from the image's {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise ValueError(f"RLE counts sum to {sum(counts)}, not {height}*{width} pixels")
            return masks.frPyObjects(segmentation, height, width)
        return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise TypeError(f"segmentation of type {type(segmentation).__name__}")


def _pack_annotations(classes: ClassSet, images: list[list], per_image: list[list]) -> ParsedCOCO:
    masks = coco_masks()
    table = np.zeros(sum(len(anns) for anns in per_image), dtype=_COCO_ANN_DTYPE)
    strings, offset, i = [], 0, 0
    for row, anns in enumerate(per_image):
        images[row] += [i, i + len(anns)]
        for label, ann, rle in anns:
            x, y, w, h = ann["bbox"] if "bbox" in ann else masks.toBbox(rle)
            table[i] = (label, bool(ann.get("iscrowd", 0)), int(masks.area(rle)), (x, y, x + w, y + h),
                        offset, offset + len(rle["counts"]))
            strings.append(rle["counts"])
            offset += len(rle["counts"])
            i += 1
    blob = np.frombuffer(b"".join(strings), dtype=np.uint8)
    return ParsedCOCO(index={"classes": classes.to_json(), "images": images}, table=table, blob=blob)


def _outward_box(box: np.ndarray) -> tuple[int, int, int, int]:
    xmin, ymin, xmax, ymax = (float(v) for v in box)
    return int(np.floor(xmin)), int(np.floor(ymin)), int(np.ceil(xmax)), int(np.ceil(ymax))


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- a plain folder of images and id masks --------------------------------------------------
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_LISTS = "splits"  # root/splits/{split}.txt: a flat folder's split lists by convention
ALL_SPLIT = "all"  # --split all: every image of a flat folder that has no split lists


class FolderReader(Reader):
    """Images, id masks and a class-names file: ``root/images/{split}/NAME.(jpg|png)``,
    ``root/masks/{split}/NAME.png`` (grayscale or palette PNG of uint8 ids) and
    ``root/classes.txt`` (line i names id i-1, i.e. the first line is id 0).

    Subfolders are searched too (Cityscapes keeps one per city); an image's id is its path
    below the image folder without the suffix (``aachen/aachen_000000_000019``).
    Every image needs a mask and every mask an image, checked when the reader opens.

    Which images form the split, in this order:

    1. ``images/{split}/`` exists: the images in it (or those of ``list=``, if given).
    2. ``images/`` holds the images itself (a flat folder): the ids of ``list=`` if given,
       else of ``root/splits/{split}.txt`` if it exists, else every image but only for
       ``split="all"``. Any other split is an error: reading all of them would turn test
       images into training data without a word.

    Options: ``images=``/``masks=`` subfolder names; ``image_suffix=``/``mask_suffix=`` the
    end of the file names to pair (default any of .jpg/.jpeg/.png, and .png; Cityscapes:
    ``_leftImg8bit.png`` and ``_gtFine_labelIds.png``); ``list=`` a file of ids, one per line
    (``{split}`` in it stands for the split, so recorded options open other splits too; a
    path without it must be named after the split, ``train.txt`` for ``--split train``);
    ``classes_file=``; ``background=`` (comma-separated ids or names that are not object
    classes; default id 0 if it is named "background", any case, else none);
    ``palette_file=`` (lines "r g b", line i = id i-1; default ``root/palette.txt`` if
    present, else the VOC palette); ``label_map=`` (see :func:`label_map_table`).
    """

    # Options default to None so that the description records only what was asked for.
    def __init__(self, root: str | Path, split: str = "train", images: str | None = None, masks: str | None = None,
                 classes_file: str | Path | None = None, background: str | None = None,
                 palette_file: str | Path | None = None, id_list: str | Path | None = None,
                 image_suffix: str | None = None, mask_suffix: str | None = None, label_map: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root is not a directory")
        self.split = split
        names_path = self.root / (classes_file or "classes.txt")
        self.classes = _classes_from_file(names_path, background, _palette_path(self.root, palette_file))
        check_root_class_names(self.root, self.classes, names_path, "folder")
        self.label_lut = label_map_table(label_map, self.root, self.classes)
        image_suffixes = (image_suffix,) if image_suffix else _IMAGE_SUFFIXES
        mask_suffixes = (mask_suffix,) if mask_suffix else (".png",)
        self.image_dir, self.mask_dir, self.list_path = self._split_source(images or "images", masks or "masks",
                                                                           id_list, image_suffixes)
        wanted = None if self.list_path is None else read_id_list(self.list_path)
        self._image_files, self._mask_files = _pair_files(self.image_dir, self.mask_dir, image_suffixes,
                                                          mask_suffixes, wanted, self.list_path)
        self._ids = sorted(self._image_files) if wanted is None else wanted
        self.description = {
            "kind": "folder",
            "root": str(self.root.resolve()),
            "split": split,
            "images": str(self.image_dir.resolve()),
            "masks": str(self.mask_dir.resolve()),
            "list": None if self.list_path is None else str(self.list_path.resolve()),
            "classes_file": str(names_path.resolve()),
            "background": [*self.classes.background],
            "options": _given_options(images=images, masks=masks, classes_file=classes_file,
                                      background=background, palette_file=palette_file, list=id_list,
                                      image_suffix=image_suffix, mask_suffix=mask_suffix, label_map=label_map),
        }

    def ids(self) -> list[str]:
        return [*self._ids]

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self._image_files.get(image_id, f"{image_id}.jpg")

    def label_path(self, image_id: str) -> Path:
        return self.mask_dir / self._mask_files.get(image_id, f"{image_id}.png")

    def _split_source(self, images: str, masks: str, id_list: str | Path | None,
                      image_suffixes: tuple[str, ...]) -> tuple[Path, Path, Path | None]:
        """(image folder, mask folder, id list or None) of the split; see the class docstring."""
        explicit_list = None if id_list is None else split_list_path(self.root, id_list, self.split)
        image_dir, mask_dir = self.root / images / self.split, self.root / masks / self.split
        flat, flat_masks = self.root / images, self.root / masks
        if image_dir.is_dir():
            list_path = explicit_list
        elif flat.is_dir() and _holds_files(flat, image_suffixes):
            image_dir, mask_dir = flat, flat_masks
            conventional = self.root / SPLIT_LISTS / f"{self.split}.txt"
            list_path = explicit_list or (conventional if conventional.is_file() else None)
            if list_path is None and self.split != ALL_SPLIT:
                raise DatasetError(
                    f"{flat}: the folders have no split named {self.split!r} (no {images}/{self.split}/, no "
                    f"{SPLIT_LISTS}/{self.split}.txt); pass --split {ALL_SPLIT} to read every image, or "
                    f"--option list=FILE with the split's ids")
        else:
            splits = sorted(p.name for p in flat.iterdir() if p.is_dir() and not p.name.startswith(".")) \
                if flat.is_dir() else []
            found = f"subfolders there: {', '.join(splits)}" if splits else f"and {flat} holds no images"
            raise DatasetError(f"{image_dir}: missing image folder ({found})")
        if not mask_dir.is_dir():
            raise DatasetError(f"{mask_dir}: missing mask folder")
        return image_dir, mask_dir, list_path


def split_list_path(root: Path, id_list: str | Path, split: str) -> Path:
    """The id list of ``split``: ``{split}`` in the option stands for the split name. A path
    without it must be the list of this very split (its name is the split's), since mix and
    pack reopen the dataset with the recorded option for other splits: a fixed
    ``train.txt`` would quietly give ``pack --split val`` the training images."""
    text = str(id_list)
    path = root / text.replace("{split}", split)
    if "{split}" not in text and path.stem != split:
        raise DatasetError(f"{path}: an id list named {path.stem!r} given for split {split!r}; write the option as "
                           f"list=DIR/{{split}}.txt so that each split finds its own list, or name the split after "
                           f"the list (--split {path.stem})")
    _require(path, "id list")
    return path


def _holds_files(folder: Path, suffixes: tuple[str, ...]) -> bool:
    """Whether ``folder`` itself (not a subfolder) holds a visible file whose name ends with
    one of ``suffixes`` (any case): then it is a flat folder, not a folder of splits."""
    lowered = tuple(s.lower() for s in suffixes)
    return any(p.name.lower().endswith(lowered) and not p.name.startswith(".") and p.is_file()
               for p in folder.iterdir())


def _scan_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, list[str]]:
    """Visible files below ``folder`` (subfolders included) whose names end with one of
    ``suffixes`` (any case): id (relative path without the suffix, ``/``-separated) ->
    relative paths, sorted. More than one path for an id is the caller's error to report."""
    lowered = [s.lower() for s in suffixes]
    found: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(folder)
        for name in sorted(filenames):
            lower = name.lower()
            suffix = next((s for s in lowered if lower.endswith(s) and len(s) < len(name)), None)
            if name.startswith(".") or suffix is None:
                continue
            rel = (rel_dir / name).as_posix()
            found.setdefault(rel[: len(rel) - len(suffix)], []).append(rel)
    return found


def _pair_files(image_dir: Path, mask_dir: Path, image_suffixes: tuple[str, ...], mask_suffixes: tuple[str, ...],
                wanted: list[str] | None = None,
                list_path: Path | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Relative file names by id for images and masks: all of them checked to pair up one to
    one, or, with ``wanted`` (the ids of ``list_path``), those ids checked to have both."""
    images = _unique(_scan_files(image_dir, image_suffixes), image_dir, "image")
    masks = _unique(_scan_files(mask_dir, mask_suffixes), mask_dir, "mask")
    ends = "/".join(image_suffixes)
    if wanted is not None:
        no_image = [i for i in wanted if i not in images]
        if no_image:
            raise DatasetError(f"{list_path}: id {no_image[0]!r} has no image {ends} in {image_dir}"
                               f"{_and_more(no_image, 'listed ids without images')}")
        images = {i: images[i] for i in wanted}
    if not images:
        raise DatasetError(f"{image_dir}: no images ({ends})")
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise DatasetError(f"{image_dir / images[no_mask[0]]}: no mask {mask_dir / (no_mask[0] + mask_suffixes[0])}"
                           f"{_and_more(no_mask, 'images without masks')}")
    if wanted is not None:
        return images, {i: masks[i] for i in wanted}
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise DatasetError(f"{mask_dir / masks[no_image[0]]}: mask without an image in {image_dir}"
                           f"{_and_more(no_image, 'masks without images')}")
    return images, masks


def _unique(found: dict[str, list[str]], folder: Path, what: str) -> dict[str, str]:
    for file_id, paths in found.items():
        if len(paths) > 1:
            raise DatasetError(f"{folder / paths[1]}: second {what} named {file_id!r} (also {paths[0]})")
    return {file_id: paths[0] for file_id, paths in found.items()}


def _and_more(items: list, what: str) -> str:
    return f" (and {len(items) - 1} more {what})" if len(items) > 1 else ""


# -- class sets, label maps: shared by the VOC and folder readers -------------------------------
class DatasetWarning(UserWarning):
    """Something about the dataset a person should know that does not stop the reading; the
    command line prints it as one line."""


def _palette_path(root: Path, palette_file: str | Path | None) -> Path | None:
    if palette_file is not None:
        return root / palette_file  # named explicitly: it must exist
    default = root / "palette.txt"
    return default if default.is_file() else None


def _classes_from_file(names_path: Path, background: str | None, palette_path: Path | None) -> ClassSet:
    return _class_set(tuple(_numbered_lines(names_path, "class-names file")), background, palette_path, names_path)


def _class_set(names: tuple[str, ...], background: str | None, palette_path: Path | None,
               names_path: Path) -> ClassSet:
    background_ids = parse_background(background, names, names_path)
    palette = read_palette(palette_path) if palette_path is not None else None
    try:
        return ClassSet(names=names, background=background_ids, palette=palette)
    except ValueError as exc:  # duplicate names, more than 255 classes
        raise DatasetError(f"{names_path}: classes do not form a label space ({exc})") from None


def check_root_class_names(root: Path, classes: ClassSet, in_use: Path | None, kind: str) -> None:
    """Compare ``root/classes.txt`` with the class set in use (names, any case).

    ``in_use`` is the names file the class set came from, None for a reader's built-in set.
    A disagreeing file beside a built-in set is an error: the reader would be guessing, and
    the guess (VOC's names for a street-scene set) is silently wrong. Beside a file the user
    named it is a warning: they chose, but may have mixed up two files."""
    path = root / "classes.txt"
    if not path.is_file() or (in_use is not None and path.resolve() == in_use.resolve()):
        return
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return  # not ours to judge; the names in use come from elsewhere
    if [n.lower() for n in names] == [n.lower() for n in classes.names]:
        return
    listed = f"{len(names)} classes ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
    if in_use is None:
        raise DatasetError(f"{path}: names {listed} but --dataset {kind} reads the {classes.num_classes} "
                           f"built-in classes; pass --option classes_file=classes.txt to use the file, "
                           f"or move it away")
    warnings.warn(f"{path}: names {listed}, not the {classes.num_classes} classes of {in_use} in use",
                  DatasetWarning, stacklevel=3)


def label_map_table(spec: str | None, root: Path, classes: ClassSet) -> np.ndarray | None:
    """The (256,) uint8 lookup table of ``label_map=``: a name of
    :data:`blendgen.classes.NAMED_LABEL_MAPS` (``cityscapes``: labelIds -> trainIds;
    ``ade20k-reduce-zero``: 0 -> 255, c -> c-1) or a file (relative to ``root``) of lines
    ``src dst``. Every id not listed becomes 255 (ignored). None: no map."""
    if spec is None:
        return None
    if spec in NAMED_LABEL_MAPS:
        pairs, where = NAMED_LABEL_MAPS[spec], f"label map {spec!r}"
    else:
        path = root / spec
        if not path.is_file():
            raise DatasetError(f"{path}: missing label map (a file of 'src dst' lines, or one of "
                               f"{', '.join(NAMED_LABEL_MAPS)})")
        pairs, where = read_label_map(path), str(path)
    bad = sorted({dst for dst in pairs.values() if dst >= classes.num_classes and dst != classes.ignore_index})
    if bad:
        raise DatasetError(f"{where}: maps to ids {bad[:5]} outside the class set 0..{classes.num_classes - 1} "
                           f"(and {classes.ignore_index} = ignore)")
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in pairs.items():
        table[src] = dst
    return table


def read_label_map(path: Path) -> dict[int, int]:
    """Lines ``src dst`` (ids 0..255; ``#`` starts a comment); a source listed twice is an error."""
    pairs: dict[int, int] = {}
    for n, raw in enumerate(_read_text(path, "label map").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        values = line.replace(",", " ").split()
        if len(values) != 2 or not all(re.fullmatch(r"\d+", v) and int(v) <= 255 for v in values):
            raise DatasetError(f"{path}: line {n} is {raw.strip()!r}, expected two ids 0..255 \"src dst\"")
        src, dst = int(values[0]), int(values[1])
        if src in pairs:
            raise DatasetError(f"{path}: line {n} maps id {src} a second time")
        pairs[src] = dst
    if not pairs:
        raise DatasetError(f"{path}: label map is empty")
    return pairs


def parse_background(spec: str | list | tuple | None, names: tuple[str, ...], names_path: Path) -> tuple[int, ...]:
    """Background ids from ``spec``: comma-separated ids or class names (a number is taken as
    an id). None: id 0 if it is named "background", else no background at all."""
    if spec is None:
        return (0,) if names[0].lower() == "background" else ()
    items = spec.split(",") if isinstance(spec, str) else [str(item) for item in spec]
    ids = []
    for item in (item.strip() for item in items):
        if not item:
            continue
        if re.fullmatch(r"\d+", item):
            class_id = int(item)
            if class_id >= len(names):
                raise DatasetError(f"{names_path}: background id {class_id} is not a class (ids 0..{len(names) - 1})")
        elif item in names:
            class_id = names.index(item)
        else:
            raise DatasetError(f"{names_path}: background {item!r} is neither a class id nor a class name")
        ids.append(class_id)
    return tuple(sorted(set(ids)))


def read_palette(path: Path) -> np.ndarray:
    """A (256, 3) palette from lines "r g b" (line i = id i-1); ids the file does not reach
    keep their VOC colour."""
    palette = voc_palette()
    lines = _numbered_lines(path, "palette file")
    if len(lines) > 256:
        raise DatasetError(f"{path}: {len(lines)} palette lines, at most 256 for uint8 labels")
    for i, line in enumerate(lines):
        values = line.replace(",", " ").split()
        if len(values) != 3 or not all(re.fullmatch(r"\d+", v) and int(v) <= 255 for v in values):
            raise DatasetError(f"{path}: line {i + 1} is {line!r}, expected three values 0..255 \"r g b\"")
        palette[i] = [int(v) for v in values]
    return palette


# -- registry -------------------------------------------------------------------------------
def _given_options(**options) -> dict:
    """The options a reader was opened with, JSON-able, for ``description["options"]``: the
    tools reopen a recorded dataset with ``open_reader(kind, root, split, **options)``."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items() if v is not None}


def _voc(root: str | Path, split: str = "train", classes_file: str | Path | None = None,
         background: str | None = None, palette_file: str | Path | None = None,
         label_map: str | None = None) -> VOCReader:
    return VOCReader(root, split, aug=False, classes_file=classes_file, background=background,
                     palette_file=palette_file, label_map=label_map)


def _voc_aug(root: str | Path, split: str = "train", classes_file: str | Path | None = None,
             background: str | None = None, palette_file: str | Path | None = None,
             label_map: str | None = None) -> VOCReader:
    return VOCReader(root, split, aug=True, classes_file=classes_file, background=background,
                     palette_file=palette_file, label_map=label_map)


def _saliency(root: str | Path, split: str = "train", layout: str | None = None, images: str | None = None,
              masks: str | None = None, pseudo_labels: str | None = None):
    """Saliency datasets (DUTS, ECSSD, image + mask folders) with pseudo labels: blendgen.saliency."""
    from .saliency import SaliencyReader  # that module imports this one

    return SaliencyReader(root, split, layout=layout, images=images, masks=masks, pseudo_labels=pseudo_labels)


READERS = {
    "voc": _voc,
    "voc-aug": _voc_aug,
    "coco": COCOReader,
    "folder": FolderReader,
    "saliency": _saliency,
}


# Option names users type that are not Python parameter names: ``list=`` (as VOC's ImageSets
# lists) is the folder reader's ``id_list`` parameter, which does not shadow the builtin.
_OPTION_PARAMETERS = {"list": "id_list"}
_OPTION_NAMES = {param: option for option, param in _OPTION_PARAMETERS.items()}


def reader_options(kind: str) -> list[str]:
    """The keyword options ``open_reader`` accepts for ``kind``, as users write them."""
    params = inspect.signature(READERS[kind]).parameters
    return [_OPTION_NAMES.get(name, name) for name in params if name not in ("root", "split")]


def open_reader(kind: str, root: str | Path, split: str = "train", **options) -> Reader:
    """The one entry point: ``kind`` is one of :data:`READERS`; ``options`` are the keyword
    arguments of that reader (an option another kind takes is refused, not ignored)."""
    if kind not in READERS:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose from {', '.join(sorted(READERS))}")
    unknown = sorted(set(options) - set(reader_options(kind)))
    if unknown:
        accepted = ", ".join(reader_options(kind)) or "none"
        raise DatasetError(f"dataset kind {kind!r} takes no option {', '.join(unknown)} (options: {accepted})")
    return READERS[kind](root, split, **{_OPTION_PARAMETERS.get(k, k): v for k, v in options.items()})
