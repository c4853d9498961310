"""Datasets as users have them, written here file by file: a street-scene set in VOC layout with
its own classes, folders with split lists, a flat folder without splits, Cityscapes label ids,
ADE20K's zero label. Each test checks class names, background ids, split membership and the
co-occurrence matrix against a count made here from the label arrays, not by the project."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from blendgen.datasets.classes import CITYSCAPES_CLASSES, VOC
from blendgen.datasets.files import DatasetError, DatasetWarning
from blendgen.datasets.registry import open_reader, reopen_source
from blendgen.generation.clusters import ClusterConfig, build_clusters, clustered_samples_per_image, expected_mix
from blendgen.generation.plan import make_plan
from cli import blendgen

IGNORE = 255
STREET_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]  # CamVid's 11: id 0 is sky, a real class


# -- writers -------------------------------------------------------------------------------------
def write_jpeg(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path.name).encode()))
    assert cv2.imwrite(str(path), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_png_image(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 77, np.uint8))


def write_gray_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8), mode="L").save(path)


def stripes(values: list[int], shape=(12, 16)) -> np.ndarray:
    """A label map with one vertical stripe per value (the last stripe takes the rest)."""
    label = np.full(shape, values[0], np.uint8)
    w = shape[1] // len(values)
    for n, v in enumerate(values):
        label[:, n * w:] = v
    return label


def hand_cooccurrence(labels: list[np.ndarray], object_ids: list[int]) -> np.ndarray:
    """IJCV Algorithm 1 as written: per image the set of object classes, +1 for every ordered pair."""
    row = {c: r for r, c in enumerate(object_ids)}
    matrix = np.zeros((len(object_ids), len(object_ids)), np.int64)
    for label in labels:
        present = [int(v) for v in np.unique(label) if int(v) in row]
        for i, m in itertools.permutations(present, 2):
            matrix[row[i], row[m]] += 1
    return matrix


def cluster(root: Path, tmp: Path, kind: str, split: str, **options):
    return build_clusters(ClusterConfig(dataset=kind, root=root, split=split, out=tmp / f"out-{kind}-{split}",
                                        reader_options=options), progress=False)


def one_line_error(action, *parts: str) -> str:
    with pytest.raises(DatasetError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


# -- a street-scene set in VOC layout with its own classes ----------------------------------------
STREET = {  # id -> (split, label values); 255 = void
    "f001": ("train", [0, 1, 3, 8]), "f002": ("train", [0, 3, 4, IGNORE]), "f003": ("train", [1, 5, 9, 10]),
    "f004": ("val", [0, 2, 6]), "f005": ("test", [7, 8]), "f006": ("train", [0, 3]),
}


@pytest.fixture
def street_voc(tmp_path: Path) -> Path:
    root = tmp_path / "street"
    for image_id, (_, values) in STREET.items():
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", 12, 16)
        write_gray_png(root / "SegmentationClass" / f"{image_id}.png", stripes(values))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i, (s, _) in STREET.items() if s == split))
    (root / "classes.txt").write_text("\n".join(STREET_CLASSES) + "\n")
    return root


def test_voc_layout_with_its_own_classes_keeps_class_zero_as_an_object(street_voc, tmp_path):
    index = cluster(street_voc, tmp_path, "voc", "train", classes_file="classes.txt")
    assert index.classes.names == tuple(STREET_CLASSES)
    assert index.classes.background == ()
    train = [i for i, (s, _) in STREET.items() if s == "train"]
    assert list(index.ids) == train  # the list's order, and nothing of val or test
    labels = [stripes(STREET[i][1]) for i in train]
    np.testing.assert_array_equal(index.cooccurrence, hand_cooccurrence(labels, list(range(11))))
    assert index.class_counts[0] == 3  # Sky: f001, f002, f006
    assert index.summary()["empty_clusters"] == ["Pole", "SignSymbol", "Fence"]
    reader = reopen_source(index.source, "val")  # what pack --split val opens
    assert reader.ids() == ["f004"] and reader.classes == index.classes


def test_voc_aug_layout_with_own_classes_and_a_background_named_by_the_user(street_voc, tmp_path):
    aug = street_voc / "SegmentationClassAug"
    aug.mkdir()
    for image_id, (_, values) in STREET.items():
        write_gray_png(aug / f"{image_id}.png", stripes(values))
    (street_voc / "train_aug.txt").write_text("f003\nf001\n")  # at the root, as some SBD packages keep it
    index = cluster(street_voc, tmp_path, "voc-aug", "train", classes_file="classes.txt", background="Sky,4")
    assert list(index.ids) == ["f003", "f001"]
    assert index.classes.background == (0, 4)  # Sky and Pavement
    object_ids = [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert index.object_names == [STREET_CLASSES[i] for i in object_ids]
    labels = [stripes(STREET[i][1]) for i in ("f003", "f001")]
    np.testing.assert_array_equal(index.cooccurrence, hand_cooccurrence(labels, object_ids))


def test_voc_layout_refuses_a_classes_file_it_would_ignore(street_voc):
    message = one_line_error(lambda: open_reader("voc", street_voc, "train"), str(street_voc / "classes.txt"),
                             "11 classes (Sky, Building, Pole, ...)", "classes_file=classes.txt")
    assert "21" in message
    (street_voc / "classes.txt").write_text("\n".join(VOC.names).upper() + "\n")  # agrees, any case: no complaint
    assert open_reader("voc", street_voc, "train").classes == VOC


def test_a_named_classes_file_beside_another_classes_txt_warns(street_voc):
    (street_voc / "names.txt").write_text("\n".join(STREET_CLASSES[:5]) + "\n")
    (street_voc / "map.txt").write_text("0 0\n1 1\n3 3\n")
    with pytest.warns(DatasetWarning, match=r"classes\.txt: names 11 classes .* not the 5 classes of .*names\.txt"):
        reader = open_reader("voc", street_voc, "train", classes_file="names.txt", label_map="map.txt")
    assert reader.classes.names == tuple(STREET_CLASSES[:5])
    np.testing.assert_array_equal(reader.read_label("f001"), stripes([0, 1, 3, IGNORE]))  # car 8 -> 255


def test_cli_prints_the_warning_as_one_line(street_voc, tmp_path):
    (street_voc / "names.txt").write_text("\n".join(STREET_CLASSES) + "\nextra\n")
    done = subprocess.run([sys.executable, "-c", "from cli import blendgen; blendgen()", "build-clusters",
                           "--dataset", "voc", "--root", str(street_voc), "--out", str(tmp_path / "out"),
                           "--option", "classes_file=names.txt", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Warning: {street_voc / 'classes.txt'}: names 11 classes (Sky, Building, Pole, ...), not the 12 classes "
        f"of {street_voc / 'names.txt'} in use"]


def test_voc_background_option_on_the_voc_names(street_voc):
    (street_voc / "classes.txt").unlink()
    reader = open_reader("voc", street_voc, "train", background="")
    assert reader.classes.names == VOC.names and reader.classes.background == ()


# -- folders with split lists, and without splits ------------------------------------------------
FLAT = {"a": [1, 2], "b": [0, 2], "c": [1, 3, IGNORE], "d": [3], "e": [0, 1, 2, 3]}


def make_flat_folder(root: Path, names: str = "background\nroad\ncar\nperson\n") -> Path:
    for n, (name, values) in enumerate(FLAT.items()):
        (write_jpeg if n % 2 else write_png_image)(root / "images" / f"{name}.{'jpg' if n % 2 else 'png'}", 12, 16)
        write_gray_png(root / "masks" / f"{name}.png", stripes(values))
    (root / "classes.txt").write_text(names)
    return root


def test_folder_split_lists_by_convention(tmp_path):
    root = make_flat_folder(tmp_path / "flat")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("e\na\nc\n")
    (root / "splits" / "val.txt").write_text("b\n")
    index = cluster(root, tmp_path, "folder", "train")
    assert list(index.ids) == ["e", "a", "c"]
    assert index.classes.background == (0,)
    np.testing.assert_array_equal(index.cooccurrence, hand_cooccurrence([stripes(FLAT[i]) for i in "eac"], [1, 2, 3]))
    assert reopen_source(index.source, "val").ids() == ["b"]
    everything = open_reader("folder", root, "all")
    assert everything.ids() == sorted(FLAT)


def test_folder_list_option_with_the_split_placeholder(tmp_path):
    root = make_flat_folder(tmp_path / "flat")
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("d\nb\n")
    (root / "ImageSets" / "val.txt").write_text("a\n")
    reader = open_reader("folder", root, "train", list="ImageSets/{split}.txt")
    assert reader.ids() == ["d", "b"]
    described = json.loads(json.dumps(reader.description))
    assert described["options"] == {"list": "ImageSets/{split}.txt"}
    assert open_reader("folder", described["root"], "val", **described["options"]).ids() == ["a"]
    # a fixed list is the list of one split: opened for another it is refused, not reused
    fixed = open_reader("folder", root, "train", list="ImageSets/train.txt")
    assert fixed.ids() == ["d", "b"]
    one_line_error(lambda: open_reader("folder", root, "val", **fixed.description["options"]),
                   "ImageSets/train.txt", "'val'", "{split}")


def test_folder_list_in_a_split_folder_layout_selects_within_it(tmp_path):
    root = tmp_path / "split-folders"
    for name in ("x", "y", "z"):
        write_jpeg(root / "images" / "train" / f"{name}.jpg", 12, 16)
        write_gray_png(root / "masks" / "train" / f"{name}.png", stripes([1]))
    (root / "classes.txt").write_text("background\nthing\n")
    (root / "train.txt").write_text("z\nx\n")
    assert open_reader("folder", root, "train").ids() == ["x", "y", "z"]
    assert open_reader("folder", root, "train", list="train.txt").ids() == ["z", "x"]


def test_folder_list_errors_name_the_list(tmp_path):
    root = make_flat_folder(tmp_path / "flat")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a\nzz\nyy\n")
    one_line_error(lambda: open_reader("folder", root, "train"), "splits/train.txt", "'zz' has no image",
                   "1 more")
    (root / "splits" / "train.txt").write_text("a\nb\na\n")
    one_line_error(lambda: open_reader("folder", root, "train"), "splits/train.txt", "listed twice")
    one_line_error(lambda: open_reader("folder", root, "val", list="lists/{split}.txt"), "lists/val.txt", "missing")


def test_flat_folder_without_splits_needs_split_all(tmp_path):
    root = make_flat_folder(tmp_path / "flat", names="sky\nroad\ncar\nperson\n")
    result = CliRunner().invoke(blendgen, ["build-clusters", "--dataset", "folder", "--root", str(root),
                                           "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {root / 'images'}: the folders have no split named 'train' (no images/train/, no splits/train.txt);"
        " pass --split all to read every image, or --option list=FILE with the split's ids"]
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "dataset.json").exists()
    index = cluster(root, tmp_path, "folder", "all")
    assert list(index.ids) == sorted(FLAT)
    assert index.classes.background == ()  # "sky" is a class: id 0 takes part in the matrix
    labels = [stripes(FLAT[i]) for i in sorted(FLAT)]
    np.testing.assert_array_equal(index.cooccurrence, hand_cooccurrence(labels, [0, 1, 2, 3]))


def test_split_folders_missing_the_asked_split_list_the_ones_there(tmp_path):
    root = tmp_path / "f"
    for split in ("training", "validation"):
        write_jpeg(root / "images" / split / "x.jpg", 12, 16)
        write_gray_png(root / "masks" / split / "x.png", stripes([1]))
    (root / "classes.txt").write_text("background\nthing\n")
    one_line_error(lambda: open_reader("folder", root, "train"), "images/train",
                   "subfolders there: training, validation")


def test_images_and_masks_in_one_folder_told_apart_by_their_ends(tmp_path):
    root = tmp_path / "one"
    for name, values in {"p": [1, 2], "q": [2]}.items():
        write_png_image(root / "data" / f"{name}_img.png", 12, 16)
        write_gray_png(root / "data" / f"{name}_mask.png", stripes(values))
    (root / "classes.txt").write_text("background\nroad\ncar\n")
    reader = open_reader("folder", root, "all", images="data", masks="data", image_suffix="_img.png",
                         mask_suffix="_mask.png")
    assert reader.ids() == ["p", "q"]
    assert reader.image_path("p").name == "p_img.png" and reader.label_path("p").name == "p_mask.png"
    np.testing.assert_array_equal(reader.read_label("p"), stripes([1, 2]))


# -- Cityscapes: labelIds files, city subfolders, suffixes ---------------------------------------
CITY_LABEL_IDS = {  # city/frame -> labelIds values (0 unlabeled, 1 ego vehicle, 7 road, 23 sky, 24 person, 26 car)
    ("aachen", "aachen_000000_000019"): [7, 26, 1, 0], ("aachen", "aachen_000001_000019"): [7, 23, 24],
    ("bremen", "bremen_000000_000019"): [23, 26, 7, 33],
}
TRAIN_ID_BY_HAND = {7: 0, 23: 10, 24: 11, 26: 13, 33: 18}  # from Cityscapes' label table


def make_cityscapes(root: Path) -> Path:
    for (city, frame), values in CITY_LABEL_IDS.items():
        write_png_image(root / "leftImg8bit" / "train" / city / f"{frame}_leftImg8bit.png", 12, 16)
        gt = root / "gtFine" / "train" / city
        write_gray_png(gt / f"{frame}_gtFine_labelIds.png", stripes(values))
        write_gray_png(gt / f"{frame}_gtFine_instanceIds.png", stripes([0]))  # siblings that must not pair
        write_gray_png(gt / f"{frame}_gtFine_color.png", stripes([0]))
    (root / "classes.txt").write_text("\n".join(CITYSCAPES_CLASSES) + "\n")
    return root


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    options = dict(images="leftImg8bit", masks="gtFine", image_suffix="_leftImg8bit.png",
                   mask_suffix="_gtFine_labelIds.png", label_map="cityscapes")
    index = cluster(root, tmp_path, "folder", "train", **options)
    assert list(index.ids) == ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019",
                               "bremen/bremen_000000_000019"]
    assert index.classes.names == CITYSCAPES_CLASSES and index.classes.background == ()
    reader = reopen_source(index.source)
    expected = {}
    for (city, frame), values in CITY_LABEL_IDS.items():
        expected[f"{city}/{frame}"] = stripes([TRAIN_ID_BY_HAND.get(v, IGNORE) for v in values])
        np.testing.assert_array_equal(reader.read_label(f"{city}/{frame}"), expected[f"{city}/{frame}"])
    np.testing.assert_array_equal(index.cooccurrence, hand_cooccurrence(list(expected.values()), list(range(19))))
    assert index.class_counts[13] == 2 and index.class_counts[0] == 3  # car, road


def test_cityscapes_without_suffixes_says_which_mask_is_missing(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    one_line_error(lambda: open_reader("folder", root, "train", images="leftImg8bit", masks="gtFine"),
                   "aachen_000000_000019_leftImg8bit.png", "no mask")


# -- ADE20K: 0 = "other", classes 1..150 ---------------------------------------------------------
ADE = {"ADE_train_00000001": ("training", [0, 1, 4]), "ADE_train_00000002": ("training", [1, 150, 13]),
       "ADE_val_00000001": ("validation", [4, 0])}


def test_ade20k_reduce_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for name, (split, values) in ADE.items():
        write_jpeg(root / "images" / split / f"{name}.jpg", 12, 16)
        write_gray_png(root / "annotations" / split / f"{name}.png", stripes(values))
    names = [f"class{c}" for c in range(1, 151)]
    (root / "classes150.txt").write_text("\n".join(names) + "\n")
    index = cluster(root, tmp_path, "folder", "training", masks="annotations", classes_file="classes150.txt",
                    label_map="ade20k-reduce-zero")
    assert list(index.ids) == ["ADE_train_00000001", "ADE_train_00000002"]
    assert index.classes.num_classes == 150 and index.classes.names[0] == "class1" and index.classes.background == ()
    reduced = {name: stripes([v - 1 if v else IGNORE for v in values]) for name, (_, values) in ADE.items()}
    reader = reopen_source(index.source)
    for name in index.ids:
        np.testing.assert_array_equal(reader.read_label(str(name)), reduced[name])
    np.testing.assert_array_equal(index.cooccurrence,
                                  hand_cooccurrence([reduced[n] for n in index.ids], list(range(150))))
    val = reopen_source(index.source, "validation")
    np.testing.assert_array_equal(val.read_label("ADE_val_00000001"), reduced["ADE_val_00000001"])
    # Without the map the raw 150 is outside the 150-class set (ids 0..149): a clear error
    raw = open_reader("folder", root, "training", masks="annotations", classes_file="classes150.txt")
    one_line_error(lambda: raw.read_label("ADE_train_00000002"), "ADE_train_00000002.png", "[150]")


def test_a_label_map_file(tmp_path):
    root = make_flat_folder(tmp_path / "flat")
    (root / "map.txt").write_text("# merge car into road, drop person\n1 1\n2 1  # car\n0 0\n")
    reader = open_reader("folder", root, "all", label_map="map.txt")
    np.testing.assert_array_equal(reader.read_label("e"), stripes([0, 1, 1, IGNORE]))
    hist, size = reader.label_histogram("e")  # what build-clusters counts, mapped without decoding to an array
    np.testing.assert_array_equal(hist, np.bincount(stripes([0, 1, 1, IGNORE]).ravel(), minlength=256))
    assert size == (12, 16)


@pytest.mark.parametrize("text, expected", [
    ("1 1\n2\n", "line 2"), ("1 1\n1 2\n", "line 2 maps id 1 a second time"), ("1 300\n", "line 1"),
    ("1 7\n", "outside the class set 0..3"), ("# nothing\n", "empty"),
])
def test_bad_label_maps_fail_in_one_line_naming_the_file(tmp_path, text, expected):
    root = make_flat_folder(tmp_path / "flat")
    (root / "map.txt").write_text(text)
    one_line_error(lambda: open_reader("folder", root, "all", label_map="map.txt"), "map.txt", expected)


def test_unknown_label_map_names_the_choices(tmp_path):
    root = make_flat_folder(tmp_path / "flat")
    one_line_error(lambda: open_reader("folder", root, "all", label_map="citiscapes"), "citiscapes",
                   "cityscapes, ade20k-reduce-zero")


# -- the expected size of mix -------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_expected_mix_count_is_the_plan_length(seed):
    rng = np.random.default_rng(seed)
    presence = rng.random((30, 7)) < rng.uniform(0.1, 0.9)
    presence[:, 6] = False  # an empty cluster
    presence[:, 5] = False
    presence[3, 5] = True  # a cluster of one image: no phantom for that image itself
    per_image = clustered_samples_per_image(presence)
    assert per_image.sum() == len(make_plan(presence, "clustered", seed=seed))
    sizes = rng.integers(10, 50, (30, 2)).astype(np.int32)
    expected = expected_mix(presence, sizes)
    assert expected["samples"] == per_image.sum()
    assert expected["bytes_estimate"] == int(0.5 * (per_image * sizes[:, 0] * sizes[:, 1]).sum())


def test_build_clusters_reports_the_expected_mix_before_mix_runs(street_voc, tmp_path):
    result = CliRunner().invoke(blendgen, ["build-clusters", "--root", str(street_voc), "--out", str(tmp_path / "o"),
                                           "--option", "classes_file=classes.txt", "--quiet"])
    assert result.exit_code == 0, result.output
    train = [np.unique(stripes(STREET[i][1])) for i in ("f001", "f002", "f003", "f006")]
    # by hand: image a in cluster k pairs with every other non-empty cluster j holding an image besides a
    sizes = {c: sum(c in t for t in train) for c in range(11)}
    count = sum(1 for t in train for k in t if k != IGNORE for j in range(11)
                if j != k and sizes[j] - (j in t) > 0)
    assert f"mix (clustered) will write {count} samples" in result.output
    assert "object classes per image: median 3, 50% of the images hold more than 3" in result.output
    summary = json.loads((tmp_path / "o" / "dataset.json").read_text())["summary"]
    assert summary["expected_mix"]["samples"] == count
    assert summary["classes_per_image"] == [0, 0, 1, 1, 2] + [0] * 7  # f006, f002, f001 and f003
