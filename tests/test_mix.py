"""``blendgen mix``: real shards written and read back, parts, workers, resume, bad input."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cli import blendgen

from blendgen.datasets.files import DatasetError
from blendgen.datasets.registry import open_reader
from blendgen.generation.blend import blend_pair
from blendgen.generation.clusters import ClusterConfig, ClusterIndex, build_clusters
from blendgen.generation.mix import merge, mix
from blendgen.generation.plan import parse_delta, row_key
from blendgen.generation.sources import MixConfig
from blendgen.shards.directory import ShardDir
from blendgen.shards.reader import ShardReader
from blendgen.shards.runner import WriteOptions
from blendgen.shards.schema import SCHEMA, ShardError, encode_image, verify_shard
from blendgen.shards.writer import ShardWriter
from voc_fixture import label_with_classes, write_palette_png

BLENDGEN = str(Path(sys.executable).with_name("blendgen"))

# (H, W) and VOC classes per image: sizes differ so phantoms get resized both ways.
IMAGES = {
    "a0": ((40, 50), [1]), "a1": ((44, 52), [1, 15]), "a2": ((36, 48), [2]), "a3": ((40, 50), [2, 15]),
    "a4": ((48, 40), [3]), "a5": ((40, 50), [15]), "a6": ((30, 44), [3, 15]), "a7": ((40, 50), [7]),
}


def write_dataset(root: Path, images: dict, seed: int = 0) -> Path:
    """VOC layout: smooth JPEG images (so JPEG round trips stay close) and palette PNG labels."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    for image_id, ((h, w), classes) in images.items():
        label = label_with_classes(classes, (h, w))
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.integers(40, 200, 3)
        image = np.stack([base[c] + 30 * np.sin(xx / (5 + c) + yy / 7) for c in range(3)], axis=-1)
        image[label > 0] += 25
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), np.clip(image, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", label)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in images))
    return root


def make_clusters(tmp: Path, images: dict = IMAGES) -> Path:
    out = tmp / "out"
    build_clusters(ClusterConfig(dataset="voc", root=write_dataset(tmp / "voc", images), out=out), progress=False)
    return out


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return make_clusters(tmp_path_factory.mktemp("mix"))


def run_mix(out: Path, dest: Path, **kwargs):
    write = WriteOptions(**{k: kwargs.pop(k) for k in list(kwargs) if k in ("shard_size", "workers", "part")})
    return mix(MixConfig(out=out, dest=dest, write=write, **kwargs), progress=False)


def mix_merge(out: Path, dest: Path) -> dict:
    return merge(MixConfig(out=out, dest=dest))


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every visible file but the part fragments: what a reader of the directory sees."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())
            if not p.name.startswith(".") and not p.name.startswith("manifest.part-")}


def all_samples(directory: Path) -> list:
    return [s for r in ShardDir.open(directory).readers() for s in r]


# -- round trip ---------------------------------------------------------------------------------
def test_mixed_shards_round_trip_through_plain_h5py(out, tmp_path):
    result, plan = run_mix(out, tmp_path / "mixed", shard_size=16, seed=1)
    index = ClusterIndex.load(out)
    n_classes = len(index.classes.object_ids)
    memberships = int(index.presence.sum())
    assert len(plan) + sum(plan.skipped.values()) == memberships * (n_classes - 1)
    manifest = json.loads((tmp_path / "mixed" / "manifest.json").read_text())
    assert manifest["num_samples"] == len(plan) == result.samples
    assert manifest["plan"]["skipped"] == plan.skipped
    assert np.array_equal(np.array(manifest["cooccurrence"]), index.cooccurrence)
    assert manifest["generation"]["strategy"] == "clustered" and manifest["generation"]["delta"] == "0.7:1"
    assert [s["name"] for s in manifest["shards"]] == [f"shard-{i:05d}.h5" for i in range(-(-len(plan) // 16))]
    keys = []
    for entry in manifest["shards"]:
        path = tmp_path / "mixed" / entry["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        with h5py.File(path, "r") as f:
            assert f.attrs["format"] == "blendgen-shards" and f.attrs["kind"] == "mixed"
            assert list(f.attrs["class_names"]) == list(index.classes.names)
            assert f.attrs["generation.seed"] == 1
            n = int(f.attrs["num_samples"])
            assert n == entry["samples"] and all(f[name].shape[0] == n for name in SCHEMA)
            delta = f["delta"][:]
            assert delta.min() >= np.float32(0.7) and delta.max() <= 1.0
            keys += [k.decode() for k in f["key"][:]]
            label = cv2.imdecode(f["label"][0], cv2.IMREAD_UNCHANGED)
            assert label.shape == (f["height"][0], f["width"][0])
    assert keys == [row_key(r, [str(i) for i in index.ids]) for r in plan.rows]


def test_every_sample_is_the_blend_of_its_sources(out, tmp_path):
    run_mix(out, tmp_path / "mixed", shard_size=10, seed=2)
    reader = open_reader("voc", out.parent / "voc", "train")
    index = ClusterIndex.load(out)
    names = index.classes.names
    samples = all_samples(tmp_path / "mixed")
    assert len({s.key for s in samples}) == len(samples) > 0
    for s in samples:
        dominant, phantom = reader.read_pair(s.dominant_id), reader.read_pair(s.phantom_id)
        image, label, phantom_label = blend_pair(dominant, phantom, np.float32(s.delta))
        assert np.array_equal(s.label, label) and np.array_equal(s.phantom_label, phantom_label)
        assert np.abs(s.image.astype(int) - image).mean() < 2.0  # JPEG q95 of the exact blend
        k, j = s.pair
        assert names[index.classes.object_ids[k]] in [names[c] for c in s.dominant_classes]
        assert set(s.phantom_classes) == set(np.unique(phantom_label).tolist()) - {0, 255}
        assert index.classes.object_ids[j] in set(np.flatnonzero(np.bincount(phantom[1].ravel(), minlength=256)))
        assert 0.7 <= s.delta <= 1.0 and s.dominant_id != s.phantom_id


def test_stored_image_bytes_are_the_jpeg_of_the_exact_blend(out, tmp_path):
    run_mix(out, tmp_path / "mixed", shard_size=100)
    reader = open_reader("voc", out.parent / "voc", "train")
    r = ShardReader(next((tmp_path / "mixed").glob("shard-*.h5")))
    raw, s = r.read_raw(0), r.read(0)
    image, _, _ = blend_pair(reader.read_pair(s.dominant_id), reader.read_pair(s.phantom_id), np.float32(s.delta))
    assert np.array_equal(raw["image"], encode_image(image, "jpeg", 95, "420"))


@pytest.mark.parametrize("strategy, delta", [("random", None), ("within", "0.8:0.9"), ("random-fixed", None), ("half", None)])
def test_ablation_strategies_write_readable_shards(out, tmp_path, strategy, delta):
    result, plan = run_mix(out, tmp_path / strategy, strategy=strategy, delta=delta, shard_size=50)
    samples = all_samples(tmp_path / strategy)
    assert len(samples) == len(plan) == result.samples
    standard = [s for s in samples if s.phantom_label is None]
    if strategy == "half":
        assert len(standard) == 4 and all(s.delta == 1.0 and s.phantom_id == "" for s in standard)
    else:
        assert not standard
    if strategy == "random-fixed":
        assert {s.delta for s in samples} == {float(np.float32(0.6))}


def test_same_seed_gives_byte_identical_shards(out, tmp_path):
    run_mix(out, tmp_path / "a", shard_size=8, seed=5)
    run_mix(out, tmp_path / "b", shard_size=8, seed=5)
    assert file_digests(tmp_path / "a") == file_digests(tmp_path / "b")
    run_mix(out, tmp_path / "c", shard_size=8, seed=6)
    assert file_digests(tmp_path / "a")["shard-00000.h5"] != file_digests(tmp_path / "c")["shard-00000.h5"]


# -- parts and workers --------------------------------------------------------------------------
def test_parts_together_equal_the_single_run(out, tmp_path):
    run_mix(out, tmp_path / "single", shard_size=7)
    first, _ = run_mix(out, tmp_path / "parts", shard_size=7, part="1/3")
    assert first.manifest is None and first.waiting_for == [2, 3]
    assert not (tmp_path / "parts" / "manifest.json").exists()
    run_mix(out, tmp_path / "parts", shard_size=7, part="3/3")
    last, _ = run_mix(out, tmp_path / "parts", shard_size=7, part="2/3")
    assert last.manifest is not None  # the last part to finish merges
    assert file_digests(tmp_path / "parts") == file_digests(tmp_path / "single")
    shard_sets = [{s["name"] for s in json.loads((tmp_path / "parts" / f"manifest.part-{i}-of-3.json").read_text())["shards"]}
                  for i in (1, 2, 3)]
    assert sum(map(len, shard_sets)) == len(set.union(*shard_sets))  # disjoint


def test_merge_combines_fragments_copied_from_other_machines(out, tmp_path):
    for i in (1, 2):
        run_mix(out, tmp_path / f"machine{i}", shard_size=7, part=f"{i}/2")
    for p in (tmp_path / "machine2").iterdir():
        p.rename(tmp_path / "machine1" / p.name)
    (tmp_path / "machine1" / "manifest.json").unlink(missing_ok=True)
    result = CliRunner().invoke(blendgen, ["mix", "--out", str(out), "--dest", str(tmp_path / "machine1"), "--merge"])
    assert result.exit_code == 0, result.output
    assert "manifest.json" in result.output
    assert not list((tmp_path / "machine1").glob("manifest.part-*"))  # merged: removed (issue 23)
    run_mix(out, tmp_path / "single", shard_size=7)
    assert file_digests(tmp_path / "machine1") == file_digests(tmp_path / "single")


def test_merge_names_the_parts_still_missing(out, tmp_path):
    run_mix(out, tmp_path / "parts", shard_size=7, part="2/3")
    with pytest.raises(ShardError, match="parts 1, 3 of 3 have not finished"):
        mix_merge(out, tmp_path / "parts")


def test_worker_processes_write_the_same_files(out, tmp_path):
    run_mix(out, tmp_path / "one", shard_size=6)
    result, _ = run_mix(out, tmp_path / "two", shard_size=6, workers=2)
    assert result.written == result.shards > 1
    assert file_digests(tmp_path / "two") == file_digests(tmp_path / "one")


# -- resume ---------------------------------------------------------------------------------------
def test_rerun_skips_complete_shards(out, tmp_path):
    run_mix(out, tmp_path / "mixed", shard_size=9)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "mixed").glob("shard-*.h5")}
    (tmp_path / "mixed" / "shard-00001.h5").unlink()
    result, _ = run_mix(out, tmp_path / "mixed", shard_size=9)
    assert result.written == 1 and result.kept == len(before) - 1
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "mixed").glob("shard-*.h5")}
    assert {n: t for n, t in after.items() if n != "shard-00001.h5"} == {n: t for n, t in before.items() if n != "shard-00001.h5"}
    ShardDir.open(tmp_path / "mixed").verify()


def test_rerun_with_other_parameters_refuses_to_mix_into_the_directory(out, tmp_path):
    run_mix(out, tmp_path / "mixed", shard_size=9, seed=0)
    with pytest.raises(ShardError, match=r"shard-00000\.h5: written with other parameters \(generation\.plan_sha256"):
        run_mix(out, tmp_path / "mixed", shard_size=9, seed=1)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    # Larger images and tiny shards so the run is still going when its first shard appears.
    rng = np.random.default_rng(0)
    images = {f"k{i:02d}": ((int(rng.integers(100, 160)), int(rng.integers(100, 160))),
                            sorted(set(rng.choice([1, 2, 3, 7, 12, 15], size=int(rng.integers(1, 3))).tolist())))
              for i in range(16)}
    out = make_clusters(tmp_path, images)
    dest = tmp_path / "killed"
    cmd = [BLENDGEN, "mix", "--out", str(out), "--dest", str(dest), "--shard-size", "3", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(dest.glob("shard-*.h5")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (dest / "manifest.json").exists()
    for p in dest.glob("shard-*.h5"):  # nothing half-written is visible
        verify_shard(p)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "kept from an earlier run" in rerun.stdout and " 0 kept" not in rerun.stdout
    assert not list(dest.glob(".*"))  # the killed writer's temporary file is gone
    run_mix(out, tmp_path / "clean", shard_size=3)
    assert file_digests(dest) == file_digests(tmp_path / "clean")
    a, b = all_samples(dest), all_samples(tmp_path / "clean")
    assert [s.key for s in a] == [s.key for s in b]
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.phantom_label, y.phantom_label) for x, y in zip(a, b))


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta, message", [
    ("0.3:1", "outside [0.5, 1]"), ("0.9:0.7", "lower bound 0.9 is above upper bound 0.7"), ("x", "expected LO:HI"),
])
def test_cli_rejects_bad_delta_with_one_clear_line(out, delta, message):
    result = CliRunner().invoke(blendgen, ["mix", "--out", str(out), "--delta", delta])
    assert result.exit_code == 2 and "Invalid value for '--delta'" in result.output and message in result.output


@pytest.mark.parametrize("part", ["0/2", "3/2", "1-2", "x"])
def test_cli_rejects_bad_part(out, part):
    result = CliRunner().invoke(blendgen, ["mix", "--out", str(out), "--part", part])
    assert result.exit_code == 2 and "Invalid value for '--part'" in result.output and "expected I/N" in result.output


def test_corrupt_input_fails_naming_the_file_and_leaves_no_partial_shard(tmp_path):
    out = make_clusters(tmp_path)
    bad = tmp_path / "voc" / "SegmentationClass" / "a5.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated after the header: clusters were built, now it breaks
    dest = tmp_path / "mixed"
    result = subprocess.run([BLENDGEN, "mix", "--out", str(out), "--dest", str(dest), "--shard-size", "4", "--quiet"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(bad) in lines[0] and "unreadable label" in lines[0]
    assert not list(dest.glob(".*")) and not (dest / "manifest.json").exists()
    for p in dest.glob("shard-*.h5"):  # shards before the failing one are complete and valid
        verify_shard(p)


def test_disk_full_fails_naming_the_shard_and_leaves_no_partial_shard(out, tmp_path, monkeypatch):
    real_flush, calls = ShardWriter._flush, []

    def flush_until_full(self):
        calls.append(self.path.name)
        if self.path.name == "shard-00001.h5":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_flush(self)

    monkeypatch.setattr(ShardWriter, "_flush", flush_until_full)
    dest = tmp_path / "mixed"
    with pytest.raises(ShardError) as info:
        run_mix(out, dest, shard_size=5)
    message = str(info.value)
    assert message.startswith(str(dest / "shard-00001.h5")) and "no space left on device" in message
    assert "\n" not in message
    assert [p.name for p in dest.iterdir()] == ["shard-00000.h5"]  # complete one kept, nothing else
    monkeypatch.setattr(ShardWriter, "_flush", real_flush)
    result, _ = run_mix(out, dest, shard_size=5)  # space freed: the rerun resumes
    assert result.kept == 1 and result.manifest is not None


def test_missing_clusters_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="dataset.json: missing; run `blendgen build-clusters"):
        run_mix(tmp_path / "nothing", tmp_path / "mixed")


@pytest.mark.parametrize("kwargs, field", [
    ({"strategy": "cutmix"}, "strategy"), ({"seed": -2}, "seed"), ({"pairs": 3}, "pairs"), ({"delta": "2"}, "delta"),
])
def test_mix_config_names_the_bad_field(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        MixConfig(out=tmp_path, **kwargs)


@pytest.mark.parametrize("kwargs, field", [({"shard_size": 0}, "shard_size"), ({"workers": 0}, "workers"),
                                           ({"part": "3/2"}, "part"), ({"part": "x"}, "part"),
                                           ({"image_chroma": "422"}, "image_chroma")])
def test_write_options_name_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        WriteOptions(**kwargs)


def test_parse_delta_is_what_the_config_uses(tmp_path):
    assert MixConfig(out=tmp_path, delta="0.6:0.9").delta == parse_delta("0.6:0.9")
