"""Class sets: names, palettes, which label values are objects, and label id maps; built in
(VOC, COCO, Cityscapes, ADE20K) or read from a dataset's files.

A dataset's label maps hold one uint8 class id per pixel, ``0..K-1``, plus the ignore
value (255, the VOC "void" band). Background ids are not object classes: they take no
part in co-occurrence or clusters (IJCV Algorithm 1 removes background and ignore).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import DatasetError, DatasetWarning, numbered_lines, read_text_file

IGNORE_INDEX = 255

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

# The 80 MS-COCO "things" categories in the order of their official category ids; a reader
# maps them to contiguous ids 1..80 with 0 for background.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: class id bits spread over the high bits of R, G, B.

    Returns an ``(n, 3)`` uint8 array; id 255 (void) comes out as (224, 224, 192) as in VOC.
    """
    ids = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.uint8)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1  # bit 0 -> R, 1 -> G, 2 -> B, then next
            palette[:, channel] |= (bit << (7 - shift)).astype(np.uint8)
    return palette


@dataclass(frozen=True)
class ClassSet:
    """The label space of one dataset: names of ids ``0..K-1``, their colours, what is ignored."""

    names: tuple[str, ...]
    background: tuple[int, ...] = (0,)
    ignore_index: int = IGNORE_INDEX
    palette: np.ndarray = field(default=None, compare=False, repr=False)  # (256, 3) uint8

    def __post_init__(self):
        if not 1 <= len(self.names) <= 255:
            raise ValueError(f"names: a uint8 label space holds 1..255 classes, got {len(self.names)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError("names: class names must be unique")
        if any(not 0 <= b < len(self.names) for b in self.background):
            raise ValueError(f"background: ids {self.background} outside 0..{len(self.names) - 1}")
        palette = voc_palette() if self.palette is None else np.asarray(self.palette, dtype=np.uint8)
        if palette.shape != (256, 3):
            raise ValueError(f"palette: expected shape (256, 3), got {palette.shape}")
        object.__setattr__(self, "palette", palette)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def object_ids(self) -> np.ndarray:
        """Label ids that are object classes: everything but background. Index of the
        co-occurrence matrix row ``r`` is label id ``object_ids[r]``."""
        return np.array([i for i in range(len(self.names)) if i not in self.background], dtype=np.int64)

    def to_json(self) -> dict:
        return {
            "names": list(self.names),
            "background": list(self.background),
            "ignore_index": self.ignore_index,
            "palette": self.palette.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "ClassSet":
        return cls(
            names=tuple(d["names"]),
            background=tuple(d["background"]),
            ignore_index=int(d["ignore_index"]),
            palette=np.asarray(d["palette"], dtype=np.uint8),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json())


# Cityscapes' 19 evaluation classes in train-id order, and the map from the ids its
# ``*_gtFine_labelIds.png`` files hold to those train ids (the ``trainId`` column of the
# dataset's label table, cityscapesscripts/helpers/labels.py); every other label id (void,
# ground, rail track, guard rail, ...) is not evaluated and becomes 255.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
CITYSCAPES_LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
# ADE20K (SceneParsing, 150 classes) stores 0 = "other" and 1..150 = the classes; training
# code drops 0 and shifts the rest down one ("reduce_zero_label"), so class c is id c-1.
ADE20K_REDUCE_ZERO = {c: c - 1 for c in range(1, 151)}

# Label id maps selectable by name (``--option label_map=NAME``): source id -> id used here,
# every id not listed -> 255.
NAMED_LABEL_MAPS = {
    "cityscapes": CITYSCAPES_LABEL_TO_TRAIN_ID,
    "ade20k-reduce-zero": ADE20K_REDUCE_ZERO,
}

VOC = ClassSet(names=VOC_CLASSES)
COCO = ClassSet(names=("background",) + COCO_CLASSES)


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


# -- class sets and label maps from a dataset's files (the VOC and folder readers' options) ----
def palette_file_path(root: Path, palette_file: str | Path | None) -> Path | None:
    if palette_file is not None:
        return root / palette_file  # named explicitly: it must exist
    default = root / "palette.txt"
    return default if default.is_file() else None


def classes_from_file(names_path: Path, background: str | None, palette_path: Path | None) -> ClassSet:
    return named_class_set(tuple(numbered_lines(names_path, "class-names file")), background, palette_path, names_path)


def named_class_set(names: tuple[str, ...], background: str | None, palette_path: Path | None,
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
    :data:`NAMED_LABEL_MAPS` (``cityscapes``: labelIds -> trainIds;
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
    for n, raw in enumerate(read_text_file(path, "label map").splitlines(), 1):
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
    lines = numbered_lines(path, "palette file")
    if len(lines) > 256:
        raise DatasetError(f"{path}: {len(lines)} palette lines, at most 256 for uint8 labels")
    for i, line in enumerate(lines):
        values = line.replace(",", " ").split()
        if len(values) != 3 or not all(re.fullmatch(r"\d+", v) and int(v) <= 255 for v in values):
            raise DatasetError(f"{path}: line {i + 1} is {line!r}, expected three values 0..255 \"r g b\"")
        palette[i] = [int(v) for v in values]
    return palette
