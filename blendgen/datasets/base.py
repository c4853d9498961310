"""The one small interface every dataset reader implements.

A reader gives, for an image id, the RGB image, the uint8 label map (class ids of its
:class:`~blendgen.datasets.classes.ClassSet`, 255 = ignore), the image size without decoding
pixels, and, where the dataset has them, per-object annotations (instance count and VOC
``occluded`` flags) that the papers' evaluation subsets need. A subclass names its files
(``ids``, ``image_path``, ``label_path``); reading and its checks are shared, here.

Readers hold only paths and small tables, so they pickle cheaply into worker processes.
Bad input raises :class:`~blendgen.datasets.files.DatasetError` with one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classes import ClassSet, check_label_values
from .files import DatasetError, header_size, read_label_histogram, read_label_png, read_rgb


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


def given_options(**options) -> dict:
    """The options a reader was opened with, JSON-able, for ``description["options"]``: the
    tools reopen a recorded dataset with ``open_reader(kind, root, split, **options)``."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items() if v is not None}
