"""MS-COCO instance annotations, converted once to semantic label PNGs (kind ``coco``)."""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import ObjectInfo, Reader, given_options
from .classes import COCO, COCO_CLASSES, ClassSet
from .files import DatasetError, describe_error, require_file, write_label_png


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
    80 give :data:`blendgen.datasets.classes.COCO`; other category lists give a class set of their
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
        require_file(self.annotation_file, "COCO annotation file")

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
            "options": given_options(annotations=annotations, images=images, cache_dir=cache_dir),
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
            raise DatasetError(f"{path}: unreadable label cache ({describe_error(exc)}); open the dataset again to rebuild it") from None

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
            raise DatasetError(f"{self.cache_dir}: cannot write the label cache ({describe_error(exc)})") from None
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
        raise DatasetError(f"{path}: malformed COCO annotations ({describe_error(exc)})") from None
    return _pack_annotations(classes, images, per_image)


def _load_json(path: Path) -> dict:
    require_file(path, "COCO annotation file")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DatasetError(f"{path}: unreadable COCO annotations ({describe_error(exc)})") from None
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


KINDS = {"coco": COCOReader}
