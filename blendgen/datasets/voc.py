"""PASCAL VOC 2012, its SBD-augmented training set, and any dataset in that layout (kinds
``voc`` and ``voc-aug``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .base import ObjectInfo, Reader, given_options
from .classes import (
    VOC, VOC_CLASSES, check_root_class_names, classes_from_file, label_map_table, named_class_set, palette_file_path,
)
from .files import DatasetError, describe_error, read_id_list


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
        palette_path = palette_file_path(self.root, palette_file)
        if classes_file is None and background is None and palette_path is None:
            self.classes = VOC
        elif classes_file is None:  # VOC's names with another background or palette
            self.classes = named_class_set(VOC_CLASSES, background, palette_path, self.root / "classes.txt")
        else:
            self.classes = classes_from_file(self.root / classes_file, background, palette_path)
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
            "options": given_options(classes_file=classes_file, background=background, palette_file=palette_file,
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
        raise DatasetError(f"{path}: unreadable annotation XML ({describe_error(exc)})") from None
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


def open_voc(root: str | Path, split: str = "train", classes_file: str | Path | None = None,
             background: str | None = None, palette_file: str | Path | None = None,
             label_map: str | None = None) -> VOCReader:
    return VOCReader(root, split, aug=False, classes_file=classes_file, background=background,
                     palette_file=palette_file, label_map=label_map)


def open_voc_aug(root: str | Path, split: str = "train", classes_file: str | Path | None = None,
                 background: str | None = None, palette_file: str | Path | None = None,
                 label_map: str | None = None) -> VOCReader:
    return VOCReader(root, split, aug=True, classes_file=classes_file, background=background,
                     palette_file=palette_file, label_map=label_map)


KINDS = {"voc": open_voc, "voc-aug": open_voc_aug}
