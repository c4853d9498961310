"""Trust the shards: flipped bytes, foreign manifests, links to other files, a second writer,
damaged source JPEGs and failing disks are caught, in one line, with nothing half-written.

Corruption here is real: bytes of a written shard file are flipped where a sample's image
bytes are stored, found by searching the file for them."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from blendgen.generation.clusters import ClusterConfig, build_clusters
from blendgen.generation.mix import mix
from blendgen.generation.sources import MixConfig
from blendgen.io import exclusive_lock
from blendgen.shards.directory import ShardDir
from blendgen.shards.manifest import MANIFEST
from blendgen.shards.reader import ShardReader
from blendgen.shards.runner import WriteOptions, describe_write_error, lock_name, Part
from blendgen.shards.schema import CorruptSample, ShardError, record_checksum
from blendgen.shards.verify import verify
from blendgen.shards.writer import sha256_file
from cli import blendgen as blendgen_cli, trainer as trainer_cli
from conftest import make_tiny_shards
from voc_fixture import label_with_classes, write_voc

BLENDGEN = str(Path(sys.executable).with_name("blendgen"))
TINY = ["--backbone", "mobilenet_v3_large", "--crop", "32", "--batch-size", "4", "--iters1", "1", "--iters2", "1",
        "--workers", "0", "--device", "cpu", "--threads", "1", "--quiet"]
CLASSES = {"a": [1], "b": [1, 15], "c": [2], "d": [2, 15], "e": [3], "f": [15], "g": [3, 7], "h": [7]}


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def final_error(result) -> str:
    """The trainer says what it starts before it fails: the error is its one last line."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert result.exit_code == 1 and errors == lines[-1:] and "Traceback" not in result.output, result.output
    return errors[0]


def flip_image_bytes(shard: Path, index: int) -> str:
    """Invert 4 bytes in the middle of sample ``index``'s stored image; return its key."""
    reader = ShardReader(shard, check=False)
    blob, key = reader.read_raw(index)["image"].tobytes(), reader.key(index)
    reader.close()
    data = bytearray(shard.read_bytes())
    pos = data.find(blob)
    assert pos > 0 and data.find(blob, pos + 1) < 0, "the image bytes are not stored exactly once"
    mid = pos + len(blob) // 2
    data[mid:mid + 4] = bytes(b ^ 0xFF for b in data[mid:mid + 4])
    shard.write_bytes(data)
    return key


@pytest.fixture
def shards(tmp_path) -> Path:
    return make_tiny_shards(tmp_path / "shards")


@pytest.fixture(scope="module")
def clusters(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("integrity")
    root = write_voc(tmp / "voc", {k: label_with_classes(v, (40, 48)) for k, v in CLASSES.items()})
    out = tmp / "out"
    build_clusters(ClusterConfig(dataset="voc", root=root, out=out), progress=False)
    return out


def run_mix(out: Path, dest: Path):
    result, _ = mix(MixConfig(out=out, dest=dest, write=WriteOptions(shard_size=3)), progress=False)
    return result


# -- the per-sample checksum ------------------------------------------------------------------------
def test_checksum_covers_every_field_and_field_boundaries(shards):
    record = ShardReader(shards / "mixed" / "shard-00000.h5").read_raw(0)
    base = record_checksum(record)
    for name in record:
        changed = dict(record)
        value = record[name]
        if isinstance(value, (bytes, str)):
            changed[name] = (value + b"x") if isinstance(value, bytes) else value + "x"
        elif isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
            changed[name] = np.append(value, np.uint8(1))
        else:
            changed[name] = np.asarray(value) + 1
        assert record_checksum(changed) != base, name
    # the same bytes split differently between two fields are another record
    moved = dict(record, dominant_id=b"img", phantom_id=b"0" + record["phantom_id"])
    assert record["dominant_id"] == b"img0" and record_checksum(moved) != base


def test_flipped_image_bytes_are_named_by_the_reader(shards):
    shard = shards / "val" / "shard-00000.h5"
    key = flip_image_bytes(shard, 5)
    reader = ShardReader(shard)
    for i in (0, 4, 6):
        reader.read(i)  # the others still read
    with pytest.raises(CorruptSample) as info:
        reader.read(5)
    assert (info.value.index, info.value.key) == (5, key)
    assert str(info.value).startswith(f"{shard}: sample 5 (key {key!r}) is corrupt (checksum mismatch)")


def test_inspect_stats_and_verify_catch_flipped_bytes(shards):
    shard = shards / "mixed" / "shard-00001.h5"
    key = flip_image_bytes(shard, 2)
    runner = CliRunner()
    line = one_line_error(runner.invoke(blendgen_cli, ["inspect", str(shard), "--index", "2"]))
    assert f"sample 2 (key {key!r}) is corrupt" in line
    assert f"key {key!r}" in one_line_error(runner.invoke(blendgen_cli, ["inspect", str(shards / "mixed"),
                                                                         "--shard", shard.name]))
    assert runner.invoke(blendgen_cli, ["inspect", str(shard), "--index", "1"]).exit_code == 0
    assert f"key {key!r}" in one_line_error(runner.invoke(blendgen_cli, ["stats", str(shards / "mixed"), "--quiet"]))

    result = runner.invoke(blendgen_cli, ["verify", str(shards), "--quiet"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"{shards / 'train'}: OK (1 shards, 16 samples" in result.output
    assert f"{shards / 'mixed'}: 2 problem(s)" in lines
    assert any(line.split()[:2] == ["shard-00001.h5", "sha256"] for line in lines)
    assert any(line.split()[:2] == ["shard-00001.h5", "samples"] and f"1 of 11 samples corrupt: 2 ('{key}'" in line
               for line in lines)


def test_verify_with_workers_finds_the_same(shards):
    flip_image_bytes(shards / "mixed" / "shard-00000.h5", 0)
    one, two = verify([shards], workers=1, progress=False), verify([shards], workers=2, progress=False)
    assert [r.problems for r in one] == [r.problems for r in two]
    assert [r.ok for r in one] == [False, True, True] and one[0].samples == 24


def test_verify_reports_size_header_and_duplicate_keys(shards):
    mixed = shards / "mixed"
    manifest = json.loads((mixed / MANIFEST).read_text())
    manifest["shards"][0]["bytes"] += 1
    manifest["shards"][1]["samples"] = 12  # it holds 11
    manifest["num_samples"] += 1
    (mixed / MANIFEST).write_text(json.dumps(manifest))
    (result,) = verify([mixed], progress=False)
    checks = {(Path(p.where).name, p.check) for p in result.problems}
    assert checks == {("shard-00000.h5", "size"), ("shard-00001.h5", "format")}
    assert "samples 11, the manifest says 12" in [p.detail for p in result.problems if p.check == "format"][0]

    train = shards / "train"
    shutil.copy(train / "shard-00000.h5", train / "shard-00001.h5")
    manifest = json.loads((train / MANIFEST).read_text())
    manifest["shards"].append({**manifest["shards"][0], "name": "shard-00001.h5"})
    manifest["num_samples"] *= 2
    (train / MANIFEST).write_text(json.dumps(manifest))
    (result,) = verify([train], progress=False)
    assert [(p.check, p.detail.split(" also")[0]) for p in result.problems] == [("keys", "sample key 'standard-0000'")]


# -- the trainer -----------------------------------------------------------------------------------
def test_trainer_stops_on_a_corrupt_sample_or_skips_and_counts_it(tmp_path, shards):
    key = flip_image_bytes(shards / "val" / "shard-00000.h5", 3)
    args = ["run", "--shards", str(shards), "--out", str(tmp_path / "runs"), *TINY]
    line = final_error(CliRunner().invoke(trainer_cli, [*args, "--name", "stop"]))
    assert f"sample 3 (key {key!r}) is corrupt" in line

    result = CliRunner().invoke(trainer_cli, [*args, "--name", "skip", "--on-corrupt", "skip"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "skip" / "report.json").read_text())
    assert report["corrupt_skipped"]["count"] == 1 and f"key {key!r}" in report["corrupt_skipped"]["first"][0]
    assert "skipped 1 corrupt sample(s)" in result.stderr


def test_eval_with_loader_workers_stops_in_one_line(tmp_path, shards):
    args = ["run", "--shards", str(shards), "--out", str(tmp_path / "runs"), "--name", "r", *TINY]
    assert CliRunner().invoke(trainer_cli, args).exit_code == 0
    key = flip_image_bytes(shards / "val" / "shard-00000.h5", 6)
    ckpt = tmp_path / "runs" / "r" / "stage2.pt"
    base = ["eval", "--checkpoint", str(ckpt), "--shards", str(shards), "--workers", "2", "--device", "cpu", "--quiet"]
    line = final_error(CliRunner().invoke(trainer_cli, base))  # found in a worker, reported in one line
    assert f"sample 6 (key {key!r}) is corrupt" in line
    result = CliRunner().invoke(trainer_cli, [*base, "--on-corrupt", "skip", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["corrupt_skipped"]["count"] == 1


def test_truncated_shard_is_one_line_naming_it(tmp_path, shards):
    shard = shards / "train" / "shard-00000.h5"
    shard.write_bytes(shard.read_bytes()[:5000])
    line = final_error(CliRunner().invoke(trainer_cli, ["run", "--shards", str(shards), "--out",
                                                        str(tmp_path / "runs"), "--name", "t", *TINY]))
    assert line.startswith(f"Error: {shard}: not a readable HDF5 file")


# -- containment -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("../val/shard-00000.h5", "is not a plain file name in this directory"),
    ("/abs/shard-00000.h5", "is not a plain file name in this directory"),
    (None, "name None is not a plain file name"),
    (".hidden.h5", "is not a plain file name"),
])
def test_manifest_must_name_plain_files_of_its_directory(shards, name, expected):
    mpath = shards / "mixed" / MANIFEST
    manifest = json.loads(mpath.read_text())
    manifest["shards"][0]["name"] = name
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="shards\\[0\\] name") as info:
        ShardDir.open(shards / "mixed")
    assert expected in str(info.value) and str(mpath) in str(info.value)


@pytest.mark.parametrize("edit,expected", [
    (lambda m: m.pop("shards"), "'shards' missing or not a list"),
    (lambda m: m.update(shards={"name": "x"}), "'shards' missing or not a list"),
    (lambda m: m["shards"][0].pop("samples"), "'samples' missing or not a count"),
    (lambda m: m["shards"][0].update(sha256=None), "'sha256' missing"),
    (lambda m: m["shards"].append(dict(m["shards"][0])), "is listed twice"),
    (lambda m: m.update(format_version=1), "format version 1 (this tool reads 2); regenerate"),
    (lambda m: m.update(num_samples=99), "num_samples 99 is not the sum of the shards' 24"),
])
def test_malformed_manifests_are_one_line(tmp_path, shards, edit, expected):
    mpath = shards / "mixed" / MANIFEST
    manifest = json.loads(mpath.read_text())
    edit(manifest)
    mpath.write_text(json.dumps(manifest))
    line = final_error(CliRunner().invoke(trainer_cli, ["run", "--shards", str(shards), "--out",
                                                        str(tmp_path / "runs"), "--name", "m", *TINY]))
    assert str(mpath) in line and expected in line
    assert "Traceback" not in line


def test_a_shard_of_another_directory_under_a_listed_name_is_refused(shards):
    # val's 8-sample shard copied over mixed/shard-00000.h5: kind, split and count all differ
    shutil.copy(shards / "val" / "shard-00000.h5", shards / "mixed" / "shard-00000.h5")
    with pytest.raises(ShardError, match="does not match the manifest \\(kind 'standard', the manifest says 'mixed'\\)"):
        ShardDir.open(shards / "mixed")


def test_external_links_and_external_storage_are_refused(tmp_path, shards):
    shard = shards / "mixed" / "shard-00000.h5"
    other = tmp_path / "elsewhere.h5"
    shutil.copy(shard, other)
    with h5py.File(shard, "a") as f:
        del f["image"]
        f["image"] = h5py.ExternalLink(str(other), "image")
    with pytest.raises(ShardError, match="'image' is a ExternalLink \\(shards must be self-contained\\)"):
        ShardDir.open(shards / "mixed")

    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(16, dtype=np.int32).tobytes())
    with h5py.File(shard, "a") as f:
        del f["image"]
        del f["height"]
        f.create_dataset("height", shape=(13,), dtype=np.int32, external=[(str(raw), 0, 52)])
        f.create_dataset("image", data=np.zeros(13, np.uint8))
    with pytest.raises(ShardError, match="'height' stores its bytes in other files"):
        ShardReader(shard)


# -- mix reruns ------------------------------------------------------------------------------------
def test_mix_rerun_rewrites_a_damaged_shard_instead_of_blessing_it(tmp_path, clusters):
    dest = tmp_path / "mixed"
    first = run_mix(clusters, dest)
    digests = {p.name: sha256_file(p) for p in sorted(dest.glob("shard-*.h5"))}
    assert len(digests) >= 3 and first.written == len(digests)
    flip_image_bytes(dest / "shard-00001.h5", 1)
    # a byte in the file but outside any sample: only the manifest's SHA-256 can tell
    other = dest / "shard-00002.h5"
    data = bytearray(other.read_bytes())
    data[-1] ^= 0xFF
    other.write_bytes(data)

    result = subprocess.run([BLENDGEN, "mix", "--out", str(clusters), "--dest", str(dest), "--shard-size", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2 damaged (rewriting them)" in result.stdout
    assert {p.name: sha256_file(p) for p in sorted(dest.glob("shard-*.h5"))} == digests
    assert all(r.ok for r in verify([dest], progress=False))
    assert not list(dest.glob(".*"))


def test_a_second_writer_of_the_same_part_refuses_to_start(tmp_path, clusters):
    dest = tmp_path / "mixed"
    dest.mkdir()
    with exclusive_lock(dest / lock_name(Part()), "test"):
        result = subprocess.run([BLENDGEN, "mix", "--out", str(clusters), "--dest", str(dest), "--shard-size", "3",
                                 "--quiet"], capture_output=True, text=True, timeout=120)
        assert list(dest.iterdir()) == [dest / lock_name(Part())]  # nothing written, the holder's lock kept
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {dest} (part 1/1) is being written by another process (pid {os.getpid()}, lock "
        f"{dest / lock_name(Part())}); wait for it to finish or stop it"]
    run_mix(clusters, dest)  # once released, the same command runs
    assert not list(dest.glob(".*"))


def test_a_failing_disk_in_mix_is_one_line_and_leaves_no_temporary(tmp_path, clusters):
    dest = tmp_path / "mixed"

    def small_files():  # a real write failure: the kernel refuses to grow a file past 24 kB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (24_000, 24_000))

    result = subprocess.run([BLENDGEN, "mix", "--out", str(clusters), "--dest", str(dest), "--shard-size", "40",
                             "--quiet"], capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: {dest / 'shard-00000.h5'}: cannot write (") and "Traceback" not in lines[0]
    assert list(dest.iterdir()) == []


def test_hdf5_full_disk_messages_read_as_no_space():
    exc = RuntimeError("Disable slist on flush dest failure failed (file write failed: time = x, filename = "
                       "'a.h5', file descriptor = 5, errno = 28, error message = 'No space left on device')")
    assert describe_write_error(exc).startswith("no space left on device while writing this shard")


# -- source images ---------------------------------------------------------------------------------
def test_a_jpeg_with_a_damaged_middle_is_refused(tmp_path):
    root = write_voc(tmp_path / "voc", {k: label_with_classes(v, (64, 80)) for k, v in CLASSES.items()})
    path = root / "JPEGImages" / "c.jpg"
    smooth = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8), (9, 9), 0)
    cv2.imwrite(str(path), smooth)
    data = path.read_bytes()
    mid = len(data) // 2
    path.write_bytes(data[:mid] + b"\xff\xd3" + data[mid:])  # a stray restart marker; the end marker is intact
    assert cv2.imread(str(path)) is not None  # OpenCV alone decodes it (and warns on stderr)
    runner = CliRunner()
    built = runner.invoke(blendgen_cli, ["build-clusters", "--dataset", "voc", "--root", str(root), "--out",
                                         str(tmp_path / "out"), "--quiet"])
    assert built.exit_code == 0, built.output  # it reads only the image headers
    for command in (["pack", "--split", "train", "--dest", str(tmp_path / "packed")],
                    ["mix", "--dest", str(tmp_path / "mixed")]):
        line = one_line_error(runner.invoke(blendgen_cli, [*command, "--out", str(tmp_path / "out"), "--quiet"]))
        assert line.startswith(f"Error: {path}: corrupt JPEG (") and "Corrupt JPEG data" in line
    assert not (tmp_path / "packed" / MANIFEST).exists() and not (tmp_path / "mixed" / MANIFEST).exists()


def test_a_shard_that_breaks_after_opening_stops_loader_workers_in_one_line(shards):
    from trainer.data import ShardStream, make_loader
    from trainer.transforms import eval_transform, pad_collate

    stream = ShardStream(ShardDir.open(shards / "val"), eval_transform(None), 2, shuffle=False, drop_last=False,
                         collate_fn=pad_collate, on_corrupt="skip")
    shard = shards / "val" / "shard-00000.h5"
    shard.write_bytes(shard.read_bytes()[:3000])  # after the directory was opened and checked
    with pytest.raises(ShardError) as info:
        list(make_loader(stream, workers=1, pin_memory=False))
    assert str(info.value).startswith(f"{shard}: not a readable HDF5 file") and "\n" not in str(info.value)


# -- issue 23: files the manifest does not account for, a busy directory, encoded headers ----------
def test_verify_lists_every_file_the_manifest_does_not_account_for(shards):
    train = shards / "train"
    shutil.copy(train / "shard-00000.h5", train / "shard-00003.h5")  # a copy: checksums fine, unlisted
    (train / ".shard-00000.h5.tmp-4242").write_bytes(b"half")
    fragment = json.loads((train / MANIFEST).read_text())
    (train / "manifest.part-2-of-2.json").write_text(json.dumps({**fragment, "shards": [
        {**fragment["shards"][0], "name": "shard-00009.h5"}]}))  # another run's part
    (train / "notes.txt").write_text("mine")
    (result,) = verify([train], progress=False)
    assert [(Path(p.where).name, p.check) for p in result.problems] == [
        (".shard-00000.h5.tmp-4242", "temp"), ("manifest.part-2-of-2.json", "fragment"), ("notes.txt", "stray"),
        ("shard-00003.h5", "unlisted")]
    cli = CliRunner().invoke(blendgen_cli, ["verify", str(train), "--quiet"])
    assert cli.exit_code == 1 and f"{train}: 4 problem(s)" in cli.output
    assert any(line.split()[:2] == ["shard-00003.h5", "unlisted"] for line in cli.output.splitlines())
    # a part manifest the manifest was merged from is accounted for
    for p in (train / "shard-00003.h5", train / ".shard-00000.h5.tmp-4242", train / "notes.txt"):
        p.unlink()
    (train / "manifest.part-2-of-2.json").write_text(json.dumps(fragment))
    assert all(r.ok for r in verify([train], progress=False))


def test_verify_says_a_directory_being_written_is_busy(shards):
    mixed = shards / "mixed"
    with exclusive_lock(mixed / lock_name(Part(2, 3)), "test"):
        (mixed / ".shard-00005.h5.tmp-1").write_bytes(b"in progress")
        result = CliRunner().invoke(blendgen_cli, ["verify", str(shards), "--quiet"])
    assert result.exit_code == 2, result.output
    assert (f"{mixed}: not verified: being written (pid {os.getpid()} holds {lock_name(Part(2, 3))}); "
            "verify it when the writer has finished") in result.output.splitlines()
    assert f"{shards / 'train'}: OK" in result.output
    # the writer gone (killed: its lock file stays, unheld), what it left is listed
    (mixed / lock_name(Part(2, 3))).write_text("123\n")
    checks = {(Path(p.where).name, p.check) for p in verify([mixed], progress=False)[0].problems}
    assert checks == {(lock_name(Part(2, 3)), "lock"), (".shard-00005.h5.tmp-1", "temp")}


def test_a_sample_whose_encoded_header_disagrees_with_its_size_is_corrupt(tmp_path, shards):
    from blendgen.shards.schema import ShardHeader
    from blendgen.shards.writer import ShardWriter

    source = ShardReader(shards / "train" / "shard-00000.h5")
    header = ShardHeader(kind="standard", classes=ShardDir.open(shards / "train").classes, split="train",
                         image_codec="jpeg")
    good = source.read_raw(0)
    jpeg = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = (30000).to_bytes(2, "big") * 2  # a bomb: 900 Mpx claimed by a few hundred bytes
    small = cv2.imencode(".jpg", np.zeros((good["height"], good["width"] + 1, 3), np.uint8))[1]
    path = tmp_path / "shard-00000.h5"
    with ShardWriter(path, header) as writer:
        writer.write(good)
        writer.write({**good, "key": "bomb", "image": np.frombuffer(bytes(jpeg), np.uint8)})
        writer.write({**good, "key": "wider", "image": small.reshape(-1)})
    reader = ShardReader(path)
    reader.read(0)
    with pytest.raises(CorruptSample, match=r"sample 1 \(key 'bomb'\) is corrupt \(image header: image of 900 Mpx"):
        reader.read(1)
    with pytest.raises(CorruptSample, match=rf"sample 2 \(key 'wider'\) is corrupt \(image header says "
                                            rf"{good['width'] + 1}x{good['height']}, the record {good['width']}x"):
        reader.read(2)
