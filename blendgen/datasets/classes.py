"""Class definitions: names, palettes and which label values are objects.

A dataset's label maps hold one uint8 class id per pixel, ``0..K-1``, plus the ignore
value (255, the VOC "void" band). Background ids are not object classes: they take no
part in co-occurrence or clusters (IJCV Algorithm 1 removes background and ignore).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

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
