"""``blendgen pack``: standard shards of a split with the evaluation metadata, same machinery as mix."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from blendgen.datasets.files import DatasetError
from blendgen.generation.clusters import ClusterConfig, ClusterIndex, build_clusters
from blendgen.generation.pack import pack
from blendgen.generation.sources import PackConfig
from blendgen.shards.directory import ShardDir
from blendgen.shards.reader import ShardReader
from blendgen.shards.runner import WriteOptions
from blendgen.shards.schema import SCHEMA, ShardError
from voc_fixture import label_with_classes, write_palette_png

BLENDGEN = str(Path(sys.executable).with_name("blendgen"))

TRAIN = {"t0": [1], "t1": [1, 15], "t2": [7], "t3": [7, 15], "t4": [12]}
# val id -> (classes, occluded flags of its XML objects; None = no annotation file)
VAL = {"v0": ([15], [False]), "v1": ([1, 15], [True, False, True]), "v2": ([7], None), "v3": ([12, 15], [False, True])}


def write_xml(path: Path, objects: list[tuple[str, bool]]) -> None:
    body = "".join(f"<object><name>{n}</name><occluded>{int(o)}</occluded><bndbox><xmin>1</xmin><ymin>1</ymin>"
                   f"<xmax>9</xmax><ymax>9</ymax></bndbox></object>" for n, o in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation>{body}</annotation>")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pack")
    root = tmp / "voc"
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, items in (("train", {i: (c, None) for i, c in TRAIN.items()}), ("val", VAL)):
        for n, (image_id, (classes, occluded)) in enumerate(items.items()):
            h, w = 30 + 4 * n, 40 + 2 * n
            image = np.full((h, w, 3), rng.integers(30, 220, 3), dtype=np.uint8)
            cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), image)
            write_palette_png(root / "SegmentationClass" / f"{image_id}.png", label_with_classes(classes, (h, w)))
            if occluded is not None:
                write_xml(root / "Annotations" / f"{image_id}.xml", [("person", o) for o in occluded])
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in items))
    build_clusters(ClusterConfig(dataset="voc", root=root, out=tmp / "out"), progress=False)
    return tmp / "out"


def run_pack(out: Path, split: str, **kwargs):
    dest = kwargs.pop("dest", None)
    return pack(PackConfig(out=out, split=split, dest=dest, write=WriteOptions(**kwargs)), progress=False)


def test_val_shards_keep_class_sets_instances_and_occlusion(out):
    result = run_pack(out, "val", shard_size=3)
    assert result.directory == out / "val" and result.samples == len(VAL) and result.manifest is not None
    samples = {s.key: s for r in ShardDir.open(out / "val").readers() for s in r}
    assert list(samples) == list(VAL)
    for image_id, (classes, occluded) in VAL.items():
        s = samples[image_id]
        assert s.phantom_label is None and s.delta == 1.0 and s.phantom_id == "" and s.pair == (-1, -1)
        assert s.dominant_id == image_id and s.dominant_classes == tuple(classes)
        assert s.instances == (-1 if occluded is None else len(occluded))
        assert s.occluded == (() if occluded is None else tuple(occluded))
        assert s.image.shape[:2] == s.label.shape


def test_standard_shards_read_back_with_plain_h5py(out):
    run_pack(out, "val", shard_size=3, dest=out.parent / "val-h5py")
    manifest = json.loads((out.parent / "val-h5py" / "manifest.json").read_text())
    assert manifest["kind"] == "standard" and manifest["split"] == "val" and manifest["num_samples"] == len(VAL)
    assert np.array_equal(np.array(manifest["cooccurrence"]), ClusterIndex.load(out).cooccurrence)
    assert manifest["source"]["split"] == "val"
    path = out.parent / "val-h5py" / manifest["shards"][0]["name"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["shards"][0]["sha256"]
    with h5py.File(path, "r") as f:
        assert f.attrs["kind"] == "standard" and f.attrs["split"] == "val"
        assert all(f[name].shape[0] == 3 for name in SCHEMA)
        assert [len(x) for x in f["phantom_label"][:]] == [0, 0, 0]
        assert f["instances"][:].tolist() == [1, 3, -1] and f["occluded"][1].tolist() == [1, 0, 1]
        label = cv2.imdecode(f["label"][0], cv2.IMREAD_UNCHANGED)
    assert np.array_equal(label, ShardReader(path).read(0).label)


def test_source_jpegs_are_stored_byte_for_byte(out, tmp_path):
    run_pack(out, "val", dest=tmp_path / "val")
    reader = ShardDir.open(tmp_path / "val").readers()[0]
    root = out.parent / "voc"
    for i, image_id in enumerate(VAL):
        assert reader.read_raw(i)["image"].tobytes() == (root / "JPEGImages" / f"{image_id}.jpg").read_bytes()
        expected = cv2.cvtColor(cv2.imread(str(root / "JPEGImages" / f"{image_id}.jpg")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(reader.read(i).image, expected)


def test_train_pack_by_parts_and_workers_equals_one_process(out, tmp_path):
    run_pack(out, "train", shard_size=2, dest=tmp_path / "single")
    run_pack(out, "train", shard_size=2, part="2/2", dest=tmp_path / "parts")
    last = run_pack(out, "train", shard_size=2, part="1/2", workers=2, dest=tmp_path / "parts")
    assert last.manifest is not None

    def digests(d):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()
                if p.name.startswith("shard-") or p.name == "manifest.json"}

    assert digests(tmp_path / "parts") == digests(tmp_path / "single")
    again = run_pack(out, "train", shard_size=2, dest=tmp_path / "single")
    assert again.written == 0 and again.kept == 3


def test_repacking_with_another_shard_size_refuses(out, tmp_path):
    run_pack(out, "train", shard_size=2, dest=tmp_path / "train")
    with pytest.raises(ShardError, match="generation.shard_size 2 vs 4"):
        run_pack(out, "train", shard_size=4, dest=tmp_path / "train")


def test_unknown_split_is_a_clear_error(out):
    with pytest.raises(DatasetError, match=r"test\.txt: missing image-set list"):
        run_pack(out, "test")


def test_pack_config_names_the_bad_field(tmp_path):
    with pytest.raises(ValueError, match="^split:"):
        PackConfig(out=tmp_path, split="../val")


def test_pack_command_runs_as_a_console_script(out, tmp_path):
    result = subprocess.run([BLENDGEN, "pack", "--out", str(out), "--split", "val", "--dest", str(tmp_path / "val"),
                             "--quiet"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'val'}: 4 images in 1 shards" in result.stdout
    assert ShardDir.open(tmp_path / "val").num_samples == 4
