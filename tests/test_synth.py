"""The synthetic VOC generator: layout, label format, annotations, determinism, class statistics."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blendgen.datasets.classes import IGNORE_INDEX, VOC_CLASSES, voc_palette  # write_sample, patched below
from blendgen.datasets.voc import VOCReader  # write_sample, patched below
from blendgen.synth import voc as synth  # write_sample, patched below
from blendgen.synth.sets import SynthConfig  # write_sample, patched below
from blendgen.synth.voc import make_synthetic_voc  # write_sample, patched below

SUBDIRS = ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations")
SMALL = dict(seed=0, num_train=24, num_val=8)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("small") / "voc"
    return out, make_synthetic_voc(SynthConfig(out=out, **SMALL), progress=False)


@pytest.fixture(scope="module")
def stats_run(tmp_path_factory) -> Path:
    """300 images: enough for the class prior to show."""
    out = tmp_path_factory.mktemp("stats") / "voc"
    make_synthetic_voc(SynthConfig(out=out, seed=3, num_train=250, num_val=50, workers=2), progress=False)
    return out


def ids_of(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def all_ids(root: Path) -> list[str]:
    return ids_of(root, "train") + ids_of(root, "val")


def read_png(path: Path) -> tuple[str, np.ndarray, list[int] | None]:
    with Image.open(path) as im:
        return im.mode, np.asarray(im), im.getpalette()


def xml_objects(root: Path, image_id: str) -> tuple[ET.Element, list[ET.Element]]:
    tree = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
    return tree, list(tree.iter("object"))


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def presence(root: Path) -> np.ndarray:
    """(images, 20) class presence from the label maps, as co-occurrence (Algorithm 1) sees it."""
    rows = []
    for image_id in all_ids(root):
        _, label, _ = read_png(root / "SegmentationClass" / f"{image_id}.png")
        hist = np.bincount(label.ravel(), minlength=256)
        rows.append(hist[1:len(VOC_CLASSES)] > 0)
    return np.array(rows)


# -- layout ------------------------------------------------------------------------------------
def test_layout_lists_are_disjoint_and_cover_every_file(small):
    root, summary = small
    train, val = ids_of(root, "train"), ids_of(root, "val")
    assert len(train) == SMALL["num_train"] and len(val) == SMALL["num_val"]
    assert len(set(train)) == len(train) and not set(train) & set(val)
    assert all(i.startswith("2026_") and len(i) == 11 for i in train + val)
    for sub in SUBDIRS:
        assert {p.stem for p in (root / sub).iterdir()} == set(train + val), sub
    assert summary["images"] == {"train": SMALL["num_train"], "val": SMALL["num_val"]}
    assert not (root.parent / "voc.partial").exists()


def test_summary_counts_match_the_annotations(small):
    root, summary = small
    for split in ("train", "val"):
        names = [[o.findtext("name") for o in xml_objects(root, i)[1]] for i in ids_of(root, split)]
        assert summary["objects"][split] == sum(map(len, names))
        for cls in VOC_CLASSES[1:]:
            assert summary["class_images"][split][cls] == sum(cls in n for n in names), (split, cls)


# -- label format -------------------------------------------------------------------------------
def test_labels_are_voc_palette_pngs_with_valid_values_and_a_void_band(small):
    root, _ = small
    palette = voc_palette().ravel().tolist()
    for image_id in all_ids(root):
        for sub in ("SegmentationClass", "SegmentationObject"):
            mode, ids, pal = read_png(root / sub / f"{image_id}.png")
            assert mode == "P" and pal[:768] == palette, (sub, image_id)
            assert (ids == IGNORE_INDEX).any(), f"{sub}/{image_id}: no void band"
        _, label, _ = read_png(root / "SegmentationClass" / f"{image_id}.png")
        values = set(np.unique(label).tolist())
        assert values <= set(range(len(VOC_CLASSES))) | {IGNORE_INDEX}, image_id
        assert values - {0, IGNORE_INDEX}, f"{image_id}: no object pixels"
        assert (label == IGNORE_INDEX).mean() < 0.25, f"{image_id}: void band far too wide"


def test_void_band_separates_every_pair_of_regions(small):
    """Like VOC, two different ids (object/background or object/object) never touch directly."""
    root, _ = small
    for image_id in all_ids(root):
        for sub in ("SegmentationClass", "SegmentationObject"):
            _, ids, _ = read_png(root / sub / f"{image_id}.png")
            for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1, :], ids[1:, :])):
                touching = (a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
                assert not touching.any(), f"{sub}/{image_id}: regions touch without void"


# -- annotations --------------------------------------------------------------------------------
def test_instances_match_xml_objects_in_paint_order(small):
    root, _ = small
    for image_id in all_ids(root):
        _, instances, _ = read_png(root / "SegmentationObject" / f"{image_id}.png")
        _, label, _ = read_png(root / "SegmentationClass" / f"{image_id}.png")
        _, objects = xml_objects(root, image_id)
        present = set(np.unique(instances).tolist()) - {0, IGNORE_INDEX}
        assert present == set(range(1, len(objects) + 1)), image_id
        for k, obj in enumerate(objects, start=1):
            classes = np.unique(label[instances == k])
            assert classes.tolist() == [VOC_CLASSES.index(obj.findtext("name"))], (image_id, k)
            ys, xs = np.nonzero(instances == k)
            box = [int(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            # VOC boxes are 1-based, inclusive; the box is of all visible pixels, void band included.
            assert box[0] <= xs.min() + 1 and box[1] <= ys.min() + 1, (image_id, k)
            assert box[2] >= xs.max() + 1 and box[3] >= ys.max() + 1, (image_id, k)
            assert 1 <= box[0] <= box[2] <= instances.shape[1] and 1 <= box[1] <= box[3] <= instances.shape[0]
            for flag in ("truncated", "occluded", "difficult"):
                assert obj.findtext(flag) in ("0", "1")


def test_image_label_and_xml_sizes_agree_and_vary(small):
    root, _ = small
    sizes = set()
    for image_id in all_ids(root):
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as im:
            assert im.mode == "RGB"
            w, h = im.size
        for sub in ("SegmentationClass", "SegmentationObject"):
            assert read_png(root / sub / f"{image_id}.png")[1].shape == (h, w)
        tree, _ = xml_objects(root, image_id)
        assert (int(tree.findtext("size/width")), int(tree.findtext("size/height"))) == (w, h)
        assert tree.findtext("filename") == f"{image_id}.jpg" and tree.findtext("segmented") == "1"
        assert 96 <= w <= 192 and 96 <= h <= 192
        sizes.add((w, h))
    assert len({w for w, _ in sizes}) > 5 and len({h for _, h in sizes}) > 5


def test_voc_reader_reads_every_image(small):
    root, _ = small
    for split in ("train", "val"):
        reader = VOCReader(root, split)
        assert reader.ids() == ids_of(root, split)
        for image_id in reader.ids():
            image, label = reader.read_pair(image_id)
            assert image.ndim == 3 and image.dtype == np.uint8 and label.shape == image.shape[:2]
            assert len(reader.objects(image_id)) >= 1


# -- determinism --------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_whatever_the_worker_count(small, tmp_path):
    root, _ = small
    again = tmp_path / "again"
    make_synthetic_voc(SynthConfig(out=again, workers=2, **SMALL), progress=False)
    assert digests(again) == digests(root)


def test_different_seed_gives_different_data(small, tmp_path):
    root, _ = small
    other = tmp_path / "other"
    make_synthetic_voc(SynthConfig(out=other, **{**SMALL, "seed": 1}), progress=False)
    a, b = digests(root), digests(other)
    assert a.keys() == b.keys()
    jpegs = [k for k in a if k.startswith("JPEGImages")]
    assert sum(a[k] != b[k] for k in jpegs) == len(jpegs)


def test_val_images_do_not_depend_on_the_train_count(small, tmp_path):
    """Each image draws from default_rng([seed, split, index]) alone."""
    root, _ = small
    other = tmp_path / "fewer_train"
    make_synthetic_voc(SynthConfig(out=other, seed=0, num_train=5, num_val=8), progress=False)
    first_val = ids_of(root, "val")[0]
    assert (other / "JPEGImages" / f"{ids_of(other, 'val')[0]}.jpg").read_bytes() == \
        (root / "JPEGImages" / f"{first_val}.jpg").read_bytes()


# -- class statistics -----------------------------------------------------------------------------
def test_person_is_the_most_frequent_class(stats_run):
    counts = presence(stats_run).sum(axis=0)
    person = VOC_CLASSES.index("person") - 1
    assert counts.argmax() == person
    assert 0.2 <= counts[person] / len(all_ids(stats_run)) <= 0.5
    assert (counts > 0).all(), "every class should appear in 300 images"


def test_cooccurrence_is_skewed_with_never_seen_pairs(stats_run):
    from blendgen.synth import model as synth  # the generative model's NEVER_TOGETHER
    p = presence(stats_run).astype(np.int64)
    c = p.T @ p
    np.fill_diagonal(c, 0)
    index = {name: i - 1 for i, name in enumerate(VOC_CLASSES) if i}
    for pair in synth.NEVER_TOGETHER:
        a, b = sorted(pair)
        assert c[index[a], index[b]] == 0, pair
    pairs = [c[i, j] for i, j in combinations(range(20), 2)]
    assert sum(v == 0 for v in pairs) >= 20
    # The groups the model is built on show up: person with riders' things, the indoor set.
    assert c[index["person"], index["bicycle"]] > 0 and c[index["person"], index["horse"]] > 0
    assert c[index["chair"], index["diningtable"]] > 0
    assert c[index["person"]].sum() == c.sum(axis=0).max(), "person should have the most company"


def test_occlusion_and_truncation_flags_occur(stats_run):
    flags = {"occluded": [], "truncated": []}
    multi_with_occlusion = multi = 0
    for image_id in all_ids(stats_run):
        _, objects = xml_objects(stats_run, image_id)
        occluded = [o.findtext("occluded") == "1" for o in objects]
        flags["occluded"] += occluded
        flags["truncated"] += [o.findtext("truncated") == "1" for o in objects]
        if len(objects) > 1:
            multi += 1
            multi_with_occlusion += any(occluded)
    for name, values in flags.items():
        assert 0.05 < np.mean(values) < 0.7, name
    assert multi >= 60 and multi_with_occlusion / multi > 0.3


# -- output directory ---------------------------------------------------------------------------
def test_existing_non_empty_out_raises_and_is_left_alone(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic_voc(SynthConfig(out=out, num_train=1, num_val=1), progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "taken.partial").exists()


def test_existing_empty_out_is_filled(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    make_synthetic_voc(SynthConfig(out=out, num_train=2, num_val=1), progress=False)
    assert len(list((out / "JPEGImages").iterdir())) == 3


def test_failed_run_leaves_neither_dataset_nor_partial(tmp_path, monkeypatch):
    written = []

    def fail_on_third(root, image_id, sample):
        if len(written) == 2:
            raise OSError("disk full")
        written.append(image_id)

    monkeypatch.setattr(synth, "write_sample", fail_on_third)
    out = tmp_path / "voc"
    with pytest.raises(OSError, match="disk full"):
        make_synthetic_voc(SynthConfig(out=out, num_train=4, num_val=1), progress=False)
    assert written and not out.exists() and not (tmp_path / "voc.partial").exists()


@pytest.mark.parametrize("field, value", [
    ("seed", -1), ("num_train", 0), ("num_val", 0), ("min_size", 8), ("max_size", 50),
    ("workers", 0), ("seed", 1.5),
])
def test_bad_config_names_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        SynthConfig(out=tmp_path / "x", **{field: value})


def test_object_scale_grows_the_objects_and_the_summary_counts_their_pixels(tmp_path):
    fractions = {}
    for scale in (1.0, 1.8):
        out = tmp_path / f"scale-{scale}"
        summary = make_synthetic_voc(SynthConfig(out=out, seed=0, num_train=30, num_val=4, object_scale=scale),
                                     progress=False)
        labels = [np.array(Image.open(out / "SegmentationClass" / f"{i}.png")) for i in ids_of(out, "train")]
        objects = sum(int(((y > 0) & (y != IGNORE_INDEX)).sum()) for y in labels)
        labelled = sum(int((y != IGNORE_INDEX).sum()) for y in labels)
        assert summary["object_pixel_fraction"]["train"] == pytest.approx(objects / labelled, abs=1e-4)
        fractions[scale] = objects / labelled
    assert fractions[1.8] > 1.8 * fractions[1.0]  # area grows with the square of the scale, less what the frame cuts
    with pytest.raises(ValueError, match="^object_scale:"):
        SynthConfig(out=tmp_path / "bad", object_scale=5)
