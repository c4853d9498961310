"""Dataset readers on small fixtures written here: exact label values, caching, pickling and
one-line DatasetErrors that name the bad file."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from blendgen.datasets import coco as readers  # the COCO cache's steps, patched below
from blendgen.datasets.base import ObjectInfo
from blendgen.datasets.classes import COCO, COCO_CLASSES, VOC, voc_palette
from blendgen.datasets.coco import COCOReader
from blendgen.datasets.files import DatasetError, read_rgb
from blendgen.datasets.folder import FolderReader
from blendgen.datasets.registry import open_reader
from blendgen.datasets.voc import VOCReader

mask_utils = pytest.importorskip("pycocotools.mask")  # COCO tests; every other layout needs no pycocotools


# -- fixture writers ---------------------------------------------------------------------------
def write_jpeg(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    assert cv2.imwrite(str(path), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_label(path: Path, label: np.ndarray, mode: str = "L") -> None:
    """A grayscale ("L") or VOC-palette ("P") PNG of ``label``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8), mode="L")
    if mode == "P":
        im = im.convert("P")  # keeps the values as indices
        im.putpalette(voc_palette().ravel().tolist())
    im.save(path)


def assert_dataset_error(action, *names: str) -> str:
    with pytest.raises(DatasetError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    for name in names:
        assert name in message, message
    return message


def boxes(height: int, width: int, *regions) -> np.ndarray:
    """A label map painted with (value, row slice, column slice) in order."""
    label = np.zeros((height, width), dtype=np.uint8)
    for value, rows, cols in regions:
        label[rows, cols] = value
    return label


# -- PASCAL VOC ----------------------------------------------------------------------------------
VOC_XML = """<annotation><filename>{id}.jpg</filename>
<object><name>person</name><occluded>1</occluded>
  <bndbox><xmin>3</xmin><ymin>2</ymin><xmax>12.0</xmax><ymax>15</ymax></bndbox></object>
<object><name>dog</name><occluded>0</occluded>
  <bndbox><xmin>14</xmin><ymin>4</ymin><xmax>25</xmax><ymax>18</ymax></bndbox></object>
<object><name>cat</name>
  <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>
</annotation>"""

VOC_LABELS = {
    # person with a void border, dog next to it
    "2007_000001": boxes(20, 30, (255, slice(1, 16), slice(2, 13)), (15, slice(2, 15), slice(3, 12)),
                         (12, slice(4, 18), slice(14, 25))),
    "2007_000002": boxes(20, 30, (1, slice(0, 10), slice(0, 30))),
}


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2012"
    for image_id, label in VOC_LABELS.items():
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", 20, 30)
        write_label(root / "SegmentationClass" / f"{image_id}.png", label, mode="P")
        write_label(root / "SegmentationClassAug" / f"{image_id}.png", label, mode="L")
        (root / "Annotations").mkdir(exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(VOC_XML.format(id=image_id))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000001\n2007_000002\n")
    (lists / "train_aug.txt").write_text("2007_000002\n\n2007_000001\n")
    return root


def test_voc_reads_palette_labels_as_indices(voc_root):
    assert Image.open(voc_root / "SegmentationClass" / "2007_000001.png").mode == "P"
    reader = open_reader("voc", voc_root, "train")
    assert reader.ids() == ["2007_000001", "2007_000002"]
    assert reader.classes == VOC
    for image_id, expected in VOC_LABELS.items():
        image, label = reader.read_pair(image_id)
        assert image.shape == (20, 30, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(label, expected)
        assert reader.image_size(image_id) == (20, 30)


def test_voc_aug_reads_grayscale_labels_from_train_aug_list(voc_root):
    reader = open_reader("voc-aug", voc_root, "train")
    assert reader.ids() == ["2007_000002", "2007_000001"]
    assert reader.label_path("2007_000001").parent.name == "SegmentationClassAug"
    np.testing.assert_array_equal(reader.read_label("2007_000001"), VOC_LABELS["2007_000001"])
    assert reader.description["kind"] == "voc-aug"


def test_voc_objects_carry_occluded_flags(voc_root):
    objects = open_reader("voc", voc_root).objects("2007_000001")
    assert objects == [
        ObjectInfo("person", True, (3, 2, 12, 15)),
        ObjectInfo("dog", False, (14, 4, 25, 18)),
        ObjectInfo("cat", False, (1, 1, 2, 2)),
    ]
    (voc_root / "Annotations" / "2007_000002.xml").unlink()
    assert open_reader("voc", voc_root).objects("2007_000002") is None


def test_labels_are_writable_arrays(voc_root):
    label = open_reader("voc", voc_root).read_label("2007_000001")
    label[0, 0] = 3  # callers crop and remap in place


# -- MS-COCO -------------------------------------------------------------------------------------
# The official ids of the 80 categories: 1..90 with gaps.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
STANDARD_CATEGORIES = [{"id": i, "name": n, "supercategory": "x"} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]
# A small category list with non-contiguous ids, given out of order on purpose.
SMALL_CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
SMALL_LABEL = {1: 1, 3: 2, 18: 3}  # category id -> contiguous id, in order of category id


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    assert sum(counts) == mask.size
    return {"counts": counts, "size": list(mask.shape)}


def region(height, width, rows, cols) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[rows, cols] = 1
    return mask


def box_polygon(x0, y0, x1, y1) -> list[float]:
    """pycocotools fills the pixels x0..x1-1, y0..y1-1 of this box."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def coco_json(dog_category: int = 18, rle_category: int = 18) -> dict:
    """Three images (json ids 7, 3, 9): overlapping polygons and a crowd, a compressed-RLE and
    a two-part polygon object, and no annotations at all."""
    toothbrush = mask_utils.encode(np.asfortranarray(region(30, 20, slice(0, 10), slice(0, 20))))
    annotations = [
        # Small dog first in the json: painting in json order would hide it under the person.
        {"id": 100, "image_id": 7, "category_id": dog_category, "iscrowd": 0, "area": 100.0,
         "bbox": [20, 10, 10, 10], "segmentation": [box_polygon(20, 10, 30, 20)]},
        {"id": 101, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 1200.0,
         "bbox": [5, 5, 40, 30], "segmentation": [box_polygon(5, 5, 45, 35)]},
        # Crowd of people overlapping the person's bottom-right corner.
        {"id": 102, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 200.0, "bbox": [40, 30, 20, 10],
         "segmentation": uncompressed_rle(region(40, 60, slice(30, 40), slice(40, 60)))},
        {"id": 103, "image_id": 3, "category_id": rle_category, "iscrowd": 0,
         "area": 200.0, "bbox": [0.5, 0, 19.2, 10],
         "segmentation": {"counts": toothbrush["counts"].decode("ascii"), "size": [30, 20]}},
        {"id": 104, "image_id": 3, "category_id": 3, "iscrowd": 0, "area": 30.0, "bbox": [2, 20, 16, 5],
         "segmentation": [box_polygon(2, 20, 5, 25), box_polygon(15, 22, 18, 25)]},
    ]
    return {
        "images": [
            {"id": 7, "file_name": "000000000007.jpg", "height": 40, "width": 60},
            {"id": 3, "file_name": "000000000003.jpg", "height": 30, "width": 20},
            {"id": 9, "file_name": "000000000009.jpg", "height": 16, "width": 16},
        ],
        "annotations": annotations,
        "categories": [dict(c) for c in SMALL_CATEGORIES],  # tests damage their copy
    }


def make_coco(root: Path, data: dict, split: str = "val2017") -> Path:
    for image in data["images"]:
        write_jpeg(root / split / image["file_name"], image["height"], image["width"])
    write_coco_json(root / "annotations" / f"instances_{split}.json", data)
    return root


def write_coco_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def expected_coco_labels(label_of: dict[int, int], rle_category: int = 18) -> dict[str, np.ndarray]:
    person, dog, car = label_of[1], label_of[18], label_of[3]
    return {
        "000000000007": boxes(40, 60, (255, slice(30, 40), slice(40, 60)),  # crowd: ignore
                              (person, slice(5, 35), slice(5, 45)),  # over the crowd
                              (dog, slice(10, 20), slice(20, 30))),  # smaller, on top
        "000000000003": boxes(30, 20, (label_of[rle_category], slice(0, 10), slice(0, 20)),
                              (car, slice(20, 25), slice(2, 5)), (car, slice(22, 25), slice(15, 18))),
        "000000000009": np.zeros((16, 16), dtype=np.uint8),
    }


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return make_coco(tmp_path / "coco", coco_json())


def test_coco_labels_pixel_for_pixel(coco_root):
    reader = open_reader("coco", coco_root, "val")
    assert reader.ids() == ["000000000007", "000000000003", "000000000009"]  # json order, all images
    assert reader.classes.names == ("background", "person", "car", "dog")
    assert reader.classes.background == (0,)
    for image_id, expected in expected_coco_labels(SMALL_LABEL).items():
        image, label = reader.read_pair(image_id)
        assert image.shape[:2] == expected.shape
        np.testing.assert_array_equal(label, expected, err_msg=image_id)


def test_coco_standard_categories_give_the_coco_class_set(tmp_path):
    data = {**coco_json(rle_category=90), "categories": STANDARD_CATEGORIES}
    reader = COCOReader(make_coco(tmp_path, data), "val2017")
    assert reader.classes == COCO
    label_of = {cid: i + 1 for i, cid in enumerate(COCO_CATEGORY_IDS)}
    assert (label_of[18], label_of[90]) == (17, 80)
    for image_id, expected in expected_coco_labels(label_of, rle_category=90).items():
        np.testing.assert_array_equal(reader.read_label(image_id), expected, err_msg=image_id)


def test_coco_objects_skip_crowds(coco_root):
    reader = COCOReader(coco_root, "val")
    assert reader.objects("000000000007") == [
        ObjectInfo("dog", False, (20, 10, 30, 20)),
        ObjectInfo("person", False, (5, 5, 45, 35)),
    ]
    assert reader.objects("000000000003")[0] == ObjectInfo("dog", False, (0, 0, 20, 10))  # rounded outwards
    assert reader.objects("000000000009") == []


def test_coco_degenerate_polygons_paint_nothing(tmp_path):
    data = coco_json()
    data["annotations"] += [
        # A 2-point "polygon" first: pycocotools would read a first polygon of 4 numbers as a box.
        {"id": 200, "image_id": 9, "category_id": 3, "iscrowd": 0, "area": 16.0, "bbox": [2, 2, 4, 4],
         "segmentation": [[1, 1, 3, 3], box_polygon(2, 2, 6, 6)]},
        {"id": 201, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 0.0, "bbox": [0, 0, 0, 0],
         "segmentation": []},
    ]
    reader = COCOReader(make_coco(tmp_path, data), "val")
    np.testing.assert_array_equal(reader.read_label("000000000009"),
                                  boxes(16, 16, (SMALL_LABEL[3], slice(2, 6), slice(2, 6))))
    assert [o.name for o in reader.objects("000000000009")] == ["car", "person"]


def test_coco_options_and_split_names(coco_root, tmp_path):
    moved = tmp_path / "elsewhere" / "my.json"
    moved.parent.mkdir()
    (coco_root / "annotations" / "instances_val2017.json").rename(moved)
    (coco_root / "val2017").rename(coco_root / "pictures")
    cache = tmp_path / "cache"
    reader = open_reader("coco", coco_root, "val2017", annotations=str(moved), images="pictures",
                         cache_dir=str(cache))
    assert reader.image_path("000000000009") == coco_root / "pictures" / "000000000009.jpg"
    assert reader.label_path("000000000009") == cache / "val2017" / "000000000009.png"
    assert reader.description["split"] == "val2017"


def test_coco_split_placeholder_in_options(coco_root):
    (coco_root / "val2017").rename(coco_root / "images_val2017")
    reader = open_reader("coco", coco_root, "val", images="images_{split}")
    assert reader.image_path("000000000009") == coco_root / "images_val2017" / "000000000009.jpg"
    assert reader.read_image("000000000009").shape == (16, 16, 3)


@pytest.mark.parametrize("kind, options", [
    ("voc", {}),
    ("coco", {"images": "pics_{split}", "cache_dir": "my_cache"}),
    ("folder", {"background": "road", "classes_file": "names.txt"}),
])
def test_description_reopens_the_same_dataset(kind, options, voc_root, coco_root, folder_root):
    root = {"voc": voc_root, "coco": coco_root, "folder": folder_root}[kind]
    if kind == "coco":
        (coco_root / "val2017").rename(coco_root / "pics_val2017")
    if kind == "folder":
        (folder_root / "classes.txt").rename(folder_root / "names.txt")
    reader = open_reader(kind, root, "val" if kind == "coco" else "train", **options)
    described = json.loads(json.dumps(reader.description))  # as stored in dataset.json
    assert described["options"] == options
    again = open_reader(described["kind"], described["root"], described["split"], **described["options"])
    assert again.description == reader.description and again.classes == reader.classes
    for image_id in reader.ids():
        np.testing.assert_array_equal(again.read_pair(image_id)[1], reader.read_pair(image_id)[1])


def test_coco_converts_lazily_per_image(coco_root):
    reader = COCOReader(coco_root, "val")
    cache = coco_root / "semantic_cache" / "val2017"
    assert sorted(cache.glob("*.png")) == []
    path = reader.label_path("000000000003")
    assert sorted(p.name for p in cache.glob("*.png")) == [path.name]  # no temporary files left
    assert Image.open(path).mode == "L"


def test_coco_cache_is_reused_by_a_second_reader(coco_root, monkeypatch):
    first = COCOReader(coco_root, "val")
    paths = {i: first.label_path(i) for i in first.ids()}
    mtimes = {i: p.stat().st_mtime_ns for i, p in paths.items()}

    def must_not_run(*args, **kwargs):
        raise AssertionError("conversion ran again")

    monkeypatch.setattr(readers, "parse_coco_json", must_not_run)
    monkeypatch.setattr(readers, "paint_coco_label", must_not_run)
    second = COCOReader(coco_root, "val2017")  # the full split name finds the same cache
    assert second.ids() == first.ids() and second.classes == first.classes
    for image_id, expected in expected_coco_labels(SMALL_LABEL).items():
        np.testing.assert_array_equal(second.read_label(image_id), expected)
        assert paths[image_id].stat().st_mtime_ns == mtimes[image_id]
    assert second.objects("000000000007") == first.objects("000000000007")


def test_coco_stale_cache_is_rebuilt(coco_root, monkeypatch):
    json_path = coco_root / "annotations" / "instances_val2017.json"
    first = COCOReader(coco_root, "val")
    old_dog = first.read_label("000000000007")[15, 25]
    assert old_dog == SMALL_LABEL[18]

    # The dog annotation now says "car"; the json changes size and mtime.
    write_coco_json(json_path, coco_json(dog_category=3))
    os.utime(json_path, ns=(1_000_000_000, 1_000_000_000))
    calls = []
    parse = readers.parse_coco_json
    monkeypatch.setattr(readers, "parse_coco_json", lambda path: calls.append(path) or parse(path))

    rebuilt = COCOReader(coco_root, "val")
    assert calls == [json_path]
    assert rebuilt.read_label("000000000007")[15, 25] == SMALL_LABEL[3]
    assert COCOReader(coco_root, "val").read_label("000000000007")[15, 25] == SMALL_LABEL[3]
    assert len(calls) == 1  # and the rebuilt cache is fresh again


@pytest.mark.parametrize("damage", ["touch json", "stamp deleted", "stamp garbled", "index garbled", "table deleted"])
def test_coco_damaged_or_outdated_cache_counts_as_stale(coco_root, monkeypatch, damage):
    cache = coco_root / "semantic_cache" / "val2017"
    json_path = coco_root / "annotations" / "instances_val2017.json"
    COCOReader(coco_root, "val").label_path("000000000007")
    if damage == "touch json":
        os.utime(json_path, ns=(5, 5))
    elif damage == "stamp deleted":
        (cache / "stamp.json").unlink()
    elif damage == "stamp garbled":
        (cache / "stamp.json").write_text("{not json")
    elif damage == "index garbled":
        (cache / "index.json").write_text("[]")
    else:
        (cache / "annotations.npy").unlink()
    calls = []
    parse = readers.parse_coco_json
    monkeypatch.setattr(readers, "parse_coco_json", lambda path: calls.append(path) or parse(path))
    reader = COCOReader(coco_root, "val")
    assert len(calls) == 1
    assert not (cache / "000000000007.png").exists()  # PNGs of the old json are gone
    np.testing.assert_array_equal(reader.read_label("000000000007"),
                                  expected_coco_labels(SMALL_LABEL)["000000000007"])


def test_coco_cache_format_bump_invalidates(coco_root, monkeypatch):
    COCOReader(coco_root, "val")
    monkeypatch.setattr(readers, "COCO_CACHE_FORMAT", readers.COCO_CACHE_FORMAT + 1)
    calls = []
    parse = readers.parse_coco_json
    monkeypatch.setattr(readers, "parse_coco_json", lambda path: calls.append(path) or parse(path))
    COCOReader(coco_root, "val")
    assert len(calls) == 1


def _read_label_in_worker(args):
    reader, image_id = args
    return reader.read_label(image_id)


def test_coco_workers_convert_in_parallel_from_a_pickled_reader(coco_root):
    reader = COCOReader(coco_root, "val")
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(2) as pool:
        labels = pool.map(_read_label_in_worker, [(reader, i) for i in reader.ids()])
    expected = expected_coco_labels(SMALL_LABEL)
    for image_id, label in zip(reader.ids(), labels):
        np.testing.assert_array_equal(label, expected[image_id])
    assert sorted(p.stem for p in (coco_root / "semantic_cache" / "val2017").glob("*.png")) == sorted(reader.ids())


def test_coco_pickle_stays_small_after_use(coco_root):
    reader = COCOReader(coco_root, "val")
    before = len(pickle.dumps(reader))
    reader.read_label("000000000007")
    reader.objects("000000000003")  # both cache arrays are now mapped
    assert len(pickle.dumps(reader)) == before  # the maps are not copied into the pickle
    # An unpickled reader maps the cache itself and can still convert.
    (coco_root / "semantic_cache" / "val2017" / "000000000007.png").unlink()
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read_label("000000000007"),
                                  expected_coco_labels(SMALL_LABEL)["000000000007"])


# -- folder --------------------------------------------------------------------------------------
FOLDER_LABELS = {
    "a": boxes(12, 16, (1, slice(0, 6), slice(0, 16)), (2, slice(8, 12), slice(4, 8)), (255, slice(6, 8), slice(0, 16))),
    "b": boxes(12, 16, (2, slice(0, 12), slice(0, 4))),
}


def make_folder(root: Path, split: str | None = "train", names: str = "background\nroad\ncar\n") -> Path:
    images, masks = root / "images", root / "masks"
    if split:
        images, masks = images / split, masks / split
    for i, (name, label) in enumerate(FOLDER_LABELS.items()):
        if i == 0:
            write_jpeg(images / f"{name}.jpg", 12, 16)
        else:  # PNG images are images too
            images.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(images / f"{name}.png"), np.full((12, 16, 3), 90, np.uint8))
        write_label(masks / f"{name}.png", label, mode="P" if i == 0 else "L")
    (root / "classes.txt").write_text(names)
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "folder")


def test_folder_reads_masks_and_classes(folder_root):
    reader = open_reader("folder", folder_root, "train")
    assert reader.ids() == ["a", "b"]
    assert reader.classes.names == ("background", "road", "car")
    assert reader.classes.background == (0,)
    assert reader.image_path("b").name == "b.png"
    for image_id, expected in FOLDER_LABELS.items():
        image, label = reader.read_pair(image_id)
        assert image.shape == (12, 16, 3)
        np.testing.assert_array_equal(label, expected)
    assert reader.objects("a") is None


def test_folder_flat_layout_without_split_folders_reads_everything_only_for_split_all(tmp_path):
    reader = FolderReader(make_folder(tmp_path, split=None), "all")
    assert reader.ids() == ["a", "b"]
    assert reader.image_dir == tmp_path / "images"
    np.testing.assert_array_equal(reader.read_label("a"), FOLDER_LABELS["a"])
    message = assert_dataset_error(lambda: FolderReader(tmp_path, "train"), str(tmp_path / "images"),
                                   "no split named 'train'", "--split all", "list=")
    assert "splits/train.txt" in message


@pytest.mark.parametrize("names, background, expected", [
    ("background\nroad\ncar\n", None, (0,)),
    ("Background\nroad\ncar\n", None, (0,)),
    ("sky\nroad\ncar\n", None, ()),
    ("sky\nroad\ncar\n", "0, road", (0, 1)),
    ("sky\nroad\ncar\n", "car", (2,)),
    ("background\nroad\ncar\n", "", ()),
])
def test_folder_background_option(tmp_path, names, background, expected):
    reader = open_reader("folder", make_folder(tmp_path, names=names), "train", background=background)
    assert reader.classes.background == expected
    assert reader.description["background"] == list(expected)


def test_folder_palette_file(folder_root):
    (folder_root / "palette.txt").write_text("0 0 0\n128 64 128\n0,0,142\n")
    reader = FolderReader(folder_root)
    np.testing.assert_array_equal(reader.classes.palette[:3], [[0, 0, 0], [128, 64, 128], [0, 0, 142]])
    np.testing.assert_array_equal(reader.classes.palette[3:], voc_palette()[3:])
    (folder_root / "palette.txt").unlink()
    np.testing.assert_array_equal(FolderReader(folder_root).classes.palette, voc_palette())


def test_folder_custom_subfolders_and_classes_file(folder_root):
    (folder_root / "images").rename(folder_root / "leftImg8bit")
    (folder_root / "masks").rename(folder_root / "gtFine")
    (folder_root / "classes.txt").rename(folder_root / "names.txt")
    reader = open_reader("folder", folder_root, "train", images="leftImg8bit", masks="gtFine",
                         classes_file="names.txt")
    np.testing.assert_array_equal(reader.read_label("b"), FOLDER_LABELS["b"])


# -- every reader pickles ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["voc", "voc-aug", "coco", "folder"])
def test_readers_work_after_pickling(kind, voc_root, coco_root, folder_root):
    root = {"voc": voc_root, "voc-aug": voc_root, "coco": coco_root, "folder": folder_root}[kind]
    reader = open_reader(kind, root, "val" if kind == "coco" else "train")
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.ids() == reader.ids() and clone.classes == reader.classes
    assert clone.description == reader.description
    for image_id in reader.ids():
        for got, want in zip(clone.read_pair(image_id), reader.read_pair(image_id)):
            np.testing.assert_array_equal(got, want)
        assert clone.objects(image_id) == reader.objects(image_id)
        assert clone.image_size(image_id) == reader.image_size(image_id)


# -- bad input: one line naming the file ---------------------------------------------------------
def test_voc_missing_jpeg(voc_root):
    (voc_root / "JPEGImages" / "2007_000002.jpg").unlink()
    reader = VOCReader(voc_root)
    for action in (reader.read_image, reader.image_size, reader.read_pair):
        assert_dataset_error(lambda: action("2007_000002"), "2007_000002.jpg", "missing")


def test_missing_label_file(voc_root):
    (voc_root / "SegmentationClass" / "2007_000001.png").unlink()
    assert_dataset_error(lambda: VOCReader(voc_root).read_label("2007_000001"), "2007_000001.png", "missing")


def test_image_and_label_sizes_differ(voc_root):
    write_jpeg(voc_root / "JPEGImages" / "2007_000001.jpg", 21, 30)
    assert_dataset_error(lambda: VOCReader(voc_root).read_pair("2007_000001"), "2007_000001.png", "2007_000001.jpg")


def test_label_values_outside_the_class_set(voc_root):
    label = VOC_LABELS["2007_000002"].copy()
    label[0, 0] = 30
    write_label(voc_root / "SegmentationClassAug" / "2007_000002.png", label)
    message = assert_dataset_error(lambda: VOCReader(voc_root, aug=True).read_label("2007_000002"),
                                   "SegmentationClassAug/2007_000002.png", "[30]")
    assert "255" in message  # names the allowed ignore value; 255 itself passed for 2007_000001


def test_corrupt_jpeg(voc_root):
    path = voc_root / "JPEGImages" / "2007_000001.jpg"
    path.write_bytes(b"this is no jpeg")
    reader = VOCReader(voc_root)
    assert_dataset_error(lambda: reader.read_image("2007_000001"), "2007_000001.jpg")
    assert_dataset_error(lambda: reader.image_size("2007_000001"), "2007_000001.jpg")


def test_truncated_jpeg(voc_root):
    path = voc_root / "JPEGImages" / "2007_000001.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # cv2.imread would decode this with grey rows
    message = assert_dataset_error(lambda: VOCReader(voc_root).read_image("2007_000001"), "2007_000001.jpg")
    assert message.endswith("2007_000001.jpg: truncated JPEG (no end-of-image marker)")


def test_dataset_error_folds_wrapped_messages_into_one_line():
    assert str(DatasetError("a.png: unreadable (first line\nsecond line)")) == "a.png: unreadable (first line second line)"


def test_bytes_after_the_jpeg_end_are_not_truncation(tmp_path):
    path = tmp_path / "x.jpg"
    write_jpeg(path, 8, 8)
    expected = read_rgb(path)
    path.write_bytes(path.read_bytes() + b"appended metadata")
    np.testing.assert_array_equal(read_rgb(path), expected)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "rgb"])
def test_bad_label_png(voc_root, damage):
    path = voc_root / "SegmentationClass" / "2007_000001.png"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    elif damage == "garbage":
        path.write_bytes(b"\x89PNG not really")
    else:
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    assert_dataset_error(lambda: VOCReader(voc_root).read_label("2007_000001"), "2007_000001.png")


@pytest.mark.parametrize("content", [None, "", "\n  \n", b"\xff\xfe\x00bad"])
def test_bad_image_set_list(voc_root, content):
    path = voc_root / "ImageSets" / "Segmentation" / "train.txt"
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert_dataset_error(lambda: VOCReader(voc_root, "train"), "train.txt")


def test_bad_voc_xml(voc_root):
    (voc_root / "Annotations" / "2007_000001.xml").write_text("<annotation><object>")
    assert_dataset_error(lambda: VOCReader(voc_root).objects("2007_000001"), "2007_000001.xml")
    (voc_root / "Annotations" / "2007_000001.xml").write_text(
        "<annotation><object><name>cat</name><bndbox><xmin>x</xmin></bndbox></object></annotation>")
    assert_dataset_error(lambda: VOCReader(voc_root).objects("2007_000001"), "2007_000001.xml")


def test_missing_root(tmp_path):
    for kind in ("voc", "coco", "folder"):
        assert_dataset_error(lambda: open_reader(kind, tmp_path / "nowhere"), "nowhere")


def _coco_without_images(data):
    del data["images"]


def _coco_no_images(data):
    data["images"], data["annotations"] = [], []


def _coco_unknown_category(data):
    data["annotations"][0]["category_id"] = 2


def _coco_unknown_image(data):
    data["annotations"][0]["image_id"] = 12345


def _coco_rle_of_wrong_size(data):
    data["annotations"][2]["segmentation"]["size"] = [40, 61]


def _coco_rle_wrong_total(data):
    data["annotations"][2]["segmentation"]["counts"][-1] += 1


def _coco_duplicate_category(data):
    data["categories"].append({"id": 4, "name": "dog"})


def _coco_missing_field(data):
    del data["annotations"][1]["segmentation"]


@pytest.mark.parametrize("damage", [
    _coco_without_images, _coco_no_images, _coco_unknown_category, _coco_unknown_image, _coco_rle_of_wrong_size,
    _coco_rle_wrong_total, _coco_duplicate_category, _coco_missing_field,
])
def test_bad_coco_json_content(tmp_path, damage):
    data = coco_json()
    damage(data)
    root = make_coco(tmp_path, coco_json())
    write_coco_json(root / "annotations" / "instances_val2017.json", data)
    assert_dataset_error(lambda: COCOReader(root, "val"), "instances_val2017.json")


@pytest.mark.parametrize("text", [None, '{"images": [', "[1, 2]", "\xff"])
def test_missing_or_unreadable_coco_json(coco_root, text):
    path = coco_root / "annotations" / "instances_val2017.json"
    if text is None:
        path.unlink()
    else:
        path.write_bytes(text.encode("latin-1"))
    assert_dataset_error(lambda: COCOReader(coco_root, "val"), "instances_val2017.json")


def test_coco_missing_image_and_unknown_id(coco_root):
    (coco_root / "val2017" / "000000000003.jpg").unlink()
    reader = COCOReader(coco_root, "val")
    assert_dataset_error(lambda: reader.read_image("000000000003"), "000000000003.jpg")
    assert_dataset_error(lambda: reader.label_path("424242"), "instances_val2017.json", "424242")


def test_coco_cache_dir_that_cannot_be_written(coco_root):
    blocker = coco_root / "not_a_dir"
    blocker.write_text("a file where the cache folder should go")
    assert_dataset_error(lambda: COCOReader(coco_root, "val", cache_dir="not_a_dir"), "not_a_dir")


def test_folder_missing_or_bad_classes_file(folder_root):
    path = folder_root / "classes.txt"
    for text, expected in [("", "empty"), ("background\n\nroad\n", "line 2"), ("car\ncar\n", "unique")]:
        path.write_text(text)
        assert_dataset_error(lambda: FolderReader(folder_root), "classes.txt", expected)
    path.unlink()
    assert_dataset_error(lambda: FolderReader(folder_root), "classes.txt", "missing")


def test_folder_image_without_mask(folder_root):
    (folder_root / "masks" / "train" / "b.png").unlink()
    assert_dataset_error(lambda: FolderReader(folder_root), "images/train/b.png", "no mask")


def test_folder_masks_without_images(folder_root):
    write_label(folder_root / "masks" / "train" / "c.png", FOLDER_LABELS["b"])
    write_label(folder_root / "masks" / "train" / "d.png", FOLDER_LABELS["b"])
    assert_dataset_error(lambda: FolderReader(folder_root), "masks/train/c.png", "1 more")


def test_folder_missing_split(folder_root):
    assert_dataset_error(lambda: FolderReader(folder_root, "val"), "images/val")


def test_folder_bad_background_and_palette(folder_root):
    assert_dataset_error(lambda: FolderReader(folder_root, background="sky"), "classes.txt", "sky")
    assert_dataset_error(lambda: FolderReader(folder_root, background="7"), "classes.txt", "7")
    (folder_root / "palette.txt").write_text("0 0 0\n300 0 0\n")
    assert_dataset_error(lambda: FolderReader(folder_root), "palette.txt", "line 2")
    assert_dataset_error(lambda: FolderReader(folder_root, palette_file="colours.txt"), "colours.txt")


def test_folder_label_outside_class_set(folder_root):
    write_label(folder_root / "masks" / "train" / "b.png", np.full((12, 16), 3, np.uint8))
    assert_dataset_error(lambda: FolderReader(folder_root).read_label("b"), "b.png", "[3]")


def test_open_reader_refuses_unknown_kinds_and_options(voc_root):
    assert_dataset_error(lambda: open_reader("cityscapes", voc_root), "cityscapes", "folder")
    assert_dataset_error(lambda: open_reader("voc", voc_root, cache_dir="x"), "cache_dir")


def test_every_layout_but_coco_works_without_pycocotools(tmp_path):
    # A machine without pycocotools (the GPU image) must still import the readers and the CLI,
    # and COCO must fail there in one line.
    import subprocess
    import sys

    code = ("import sys; sys.modules['pycocotools'] = None\n"
            "import cli, blendgen.datasets.coco as r\n"
            "try:\n    r.coco_masks()\nexcept r.DatasetError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "COCO: reading COCO annotations needs pycocotools (pip install pycocotools)"


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    from blendgen.datasets import files as readers  # header_size, MAX_PIXELS
    # Issue 23: a JPEG of a few hundred bytes whose header claims 12000x10000 (120 Mpx) or
    # 30000x30000 (900 Mpx, over PIL's own limit) is refused before any decoding.
    def bomb(name: str, w: int, h: int) -> Path:
        data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
        sof = data.find(b"\xff\xc0")
        data[sof + 5:sof + 7], data[sof + 7:sof + 9] = h.to_bytes(2, "big"), w.to_bytes(2, "big")
        (tmp_path / name).write_bytes(bytes(data))
        return tmp_path / name

    big, huge = bomb("big.jpg", 12000, 10000), bomb("huge.jpg", 30000, 30000)
    for read in (read_rgb, readers.header_size):
        with pytest.raises(DatasetError, match=rf"^{big}: image of 12000x10000 = 120 Mpx, over the limit of 100 Mpx; "
                                               "not decoded$"):
            read(big)
        with pytest.raises(DatasetError, match=rf"^{huge}: image of 900 Mpx, over the limit of 100 Mpx"):
            read(huge)
    assert readers.MAX_PIXELS == 100_000_000
    assert readers.header_size(big, max_pixels=None) == (10000, 12000)
    assert readers.header_size(huge, max_pixels=10 ** 9) == (30000, 30000)  # above PIL's refusal, when allowed


def test_header_sizes_read_without_pil_agree_with_pil():
    import io

    from PIL import Image

    from blendgen.datasets.files import encoded_size

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    encoded = []
    for kwargs in ({"format": "JPEG"}, {"format": "JPEG", "progressive": True},
                   {"format": "JPEG", "exif": image.getexif().tobytes() or b"Exif\x00\x00"}, {"format": "PNG"}):
        buf = io.BytesIO()
        image.save(buf, **kwargs)
        encoded.append(buf.getvalue())
    buf = io.BytesIO()
    image.convert("P").save(buf, format="PNG")
    encoded.append(buf.getvalue())
    for data in encoded:
        assert encoded_size(data) == (53, 37) == Image.open(io.BytesIO(data)).size
    assert encoded_size(b"GIF89a....") is None and encoded_size(b"\xff\xd8\xff") is None
