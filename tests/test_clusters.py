import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blendgen.datasets.classes import VOC
from blendgen.datasets.files import DatasetError
from blendgen.generation.clusters import ClusterConfig, ClusterIndex, build_clusters, cooccurrence_from_presence
from voc_fixture import label_with_classes, write_voc


def algorithm1(class_sets: list[set[int]], n: int) -> np.ndarray:
    """IJCV Algorithm 1, transcribed literally (matrix indices are object-class indices)."""
    c = np.zeros((n, n), dtype=np.int64)
    for ci in range(n):
        for unique in class_sets:
            if ci in unique:
                for m in unique - {ci}:
                    c[ci, m] += 1
    return c


def test_cooccurrence_hand_worked_example():
    # images: {person, car}, {person}, {person, bicycle, bottle}, {} ; index = id - 1
    presence = np.zeros((4, 20), dtype=bool)
    for row, ids in enumerate([[15, 7], [15], [15, 2, 5], []]):
        presence[row, np.array(ids, dtype=int) - 1] = True
    c = cooccurrence_from_presence(presence)
    expected = np.zeros((20, 20), dtype=np.int64)
    for a, b in [(15, 7), (15, 2), (15, 5), (2, 5)]:
        expected[a - 1, b - 1] = expected[b - 1, a - 1] = 1
    np.testing.assert_array_equal(c, expected)
    assert c[14].sum() == 3  # person co-occurs with three classes, once each


@pytest.mark.parametrize("seed", range(5))
def test_cooccurrence_equals_pTp_and_algorithm1_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n_images, n = rng.integers(1, 60), rng.integers(2, 12)
    presence = rng.random((n_images, n)) < rng.uniform(0.05, 0.6)
    c = cooccurrence_from_presence(presence)
    p = presence.astype(np.int64)
    expected = p.T @ p
    np.fill_diagonal(expected, 0)
    np.testing.assert_array_equal(c, expected)
    np.testing.assert_array_equal(c, algorithm1([set(np.flatnonzero(r)) for r in presence], n))
    assert (c == c.T).all() and not np.diag(c).any()


CLASS_SETS = {"a": [15, 7], "b": [15], "c": [15, 2, 5], "d": [], "e": [12, 15], "f": [7, 7]}


@pytest.fixture
def voc_root(tmp_path):
    labels = {k: label_with_classes(v) for k, v in CLASS_SETS.items()}
    return write_voc(tmp_path / "voc", labels)


def test_build_clusters_on_voc_layout(voc_root, tmp_path):
    index = build_clusters(ClusterConfig(dataset="voc", root=voc_root, out=tmp_path / "out"), progress=False)
    assert list(index.ids) == list(CLASS_SETS)
    assert index.presence.shape == (6, 20)
    for row, classes in enumerate(CLASS_SETS.values()):
        assert set(VOC.object_ids[index.presence[row]]) == set(classes)
    expected = algorithm1([{c - 1 for c in v} for v in CLASS_SETS.values()], 20)
    np.testing.assert_array_equal(index.cooccurrence, expected)
    assert index.class_counts[15 - 1] == 4 and index.class_counts[7 - 1] == 2
    assert index.sizes.tolist() == [[24, 32]] * 6
    # cluster k = the images containing class k
    assert index.ids[index.cluster(15 - 1)].tolist() == ["a", "b", "c", "e"]
    s = index.summary()
    assert s["images_without_objects"] == 1 and "aeroplane" in s["empty_clusters"]


def test_saved_index_round_trips_and_is_readable_by_people(voc_root, tmp_path):
    out = tmp_path / "out"
    index = build_clusters(ClusterConfig(dataset="voc", root=voc_root, out=out), progress=False)
    loaded = ClusterIndex.load(out)
    np.testing.assert_array_equal(loaded.cooccurrence, index.cooccurrence)
    np.testing.assert_array_equal(loaded.presence, index.presence)
    assert loaded.classes == index.classes and loaded.source["kind"] == "voc"
    header, *rows = (out / "cooccurrence.csv").read_text().splitlines()
    assert header.split(",")[1:] == list(VOC.names[1:])
    person = next(r for r in rows if r.startswith("person,")).split(",")[1:]
    assert int(person[7 - 1]) == 1 and int(person[2 - 1]) == 1 and int(person[15 - 1]) == 0
    assert (out / "cooccurrence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_two_workers_give_the_same_result_as_one(voc_root, tmp_path):
    one = build_clusters(ClusterConfig(dataset="voc", root=voc_root, out=tmp_path / "o1"), progress=False)
    two = build_clusters(ClusterConfig(dataset="voc", root=voc_root, out=tmp_path / "o2", workers=2), progress=False)
    np.testing.assert_array_equal(one.presence, two.presence)
    np.testing.assert_array_equal(one.sizes, two.sizes)


def test_label_value_outside_class_set_names_the_file(tmp_path):
    bad = label_with_classes([3])
    bad[5, 5] = 21
    root = write_voc(tmp_path / "voc", {"ok": label_with_classes([1]), "bad": bad})
    with pytest.raises(DatasetError, match=r"bad\.png: label values \[21\]"):
        build_clusters(ClusterConfig(dataset="voc", root=root, out=tmp_path / "out"), progress=False)
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_image_and_label_size_mismatch_is_reported(tmp_path):
    root = write_voc(tmp_path / "voc", {"x": label_with_classes([1])}, image_sizes={"x": (20, 32)})
    with pytest.raises(DatasetError, match=r"x\.png: label is 32x24 but image x\.jpg is 32x20"):
        build_clusters(ClusterConfig(dataset="voc", root=root, out=tmp_path / "out"), progress=False)


def test_missing_image_is_reported_from_a_worker(tmp_path):
    root = write_voc(tmp_path / "voc", {f"i{k}": label_with_classes([1]) for k in range(4)})
    (root / "JPEGImages" / "i2.jpg").unlink()
    with pytest.raises(DatasetError, match=r"i2\.jpg: missing image"):
        build_clusters(ClusterConfig(dataset="voc", root=root, out=tmp_path / "out", workers=2), progress=False)


def test_console_script_runs_and_fails_with_one_line(voc_root, tmp_path):
    exe = [str(Path(sys.executable).with_name("blendgen"))]  # the installed console script
    ok = subprocess.run(exe + ["build-clusters", "--root", str(voc_root), "--out", str(tmp_path / "o"), "--quiet"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "6 images, 20 object classes, 1 images without objects" in ok.stdout
    bad = subprocess.run(exe + ["build-clusters", "--root", str(tmp_path / "nowhere"), "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "nowhere" in bad.stderr
