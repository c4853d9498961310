"""blendgen inspect / stats and docs/format.md, on small shards written with our own writer."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from blendgen.datasets.classes import ClassSet
from blendgen.io import write_json
from blendgen.shards.directory import ShardDir
from blendgen.shards.inspect import InspectConfig, format_inspect, inspect
from blendgen.shards.manifest import manifest_dict, shard_name
from blendgen.shards.reader import ShardReader
from blendgen.shards.schema import SCHEMA, Sample, ShardError, ShardHeader, encode_sample
from blendgen.shards.stats import StatsConfig, format_stats, stats, write_stats_png
from blendgen.shards.writer import ShardWriter
from cli import blendgen

DOC = Path(__file__).resolve().parents[1] / "docs" / "format.md"
# Label ids 1, 2, 3 are the object classes; their matrix (cluster) indices are 0, 1, 2.
CLASSES = ClassSet(names=("background", "cat", "dog", "car"))
CAT, DOG, CAR = (tuple(int(c) for c in CLASSES.palette[i]) for i in (1, 2, 3))  # (128,0,0) (0,128,0) (128,128,0)
VOID = tuple(int(c) for c in CLASSES.palette[255])  # (224, 224, 192)
GRAY = 100  # flat image value: overlays then have exactly known colours


def header(kind="mixed", strategy="clustered") -> ShardHeader:
    # PNG images so the decoded pixels are exactly those written.
    return ShardHeader(kind=kind, classes=CLASSES, split="train", image_codec="png",
                       source={"kind": "voc", "root": "data/tiny", "split": "train"},
                       generation={"strategy": strategy, "delta": [0.7, 1.0], "seed": 3})


def stripes(ids, hw, left: bool) -> np.ndarray:
    """A label map with each class of ``ids`` as a horizontal band in the left (or right) half,
    and a void row above the first band, as VOC's borders."""
    h, w = hw
    label = np.zeros(hw, np.uint8)
    x0, x1 = (0, w // 2) if left else (w // 2, w)
    band = (h - 2) // max(1, len(ids))
    for n, c in enumerate(ids):
        label[2 + n * band: 2 + (n + 1) * band, x0:x1] = c
    if ids:
        label[1, x0:x1] = 255
    return label


def make_sample(n: int, dom, pha, pair, delta, hw=(32, 48), standard=False) -> Sample:
    image = np.full((*hw, 3), GRAY, np.uint8)
    return Sample(
        key=f"s{n:04d}", image=image, label=stripes(dom, hw, left=True),
        phantom_label=None if standard else stripes(pha, hw, left=False), delta=delta,
        dominant_id=f"2008_{n:06d}", phantom_id="" if standard else f"2009_{n:06d}",
        dominant_classes=tuple(dom), phantom_classes=tuple(pha), pair=pair,
        instances=len(dom) + len(pha), occluded=tuple([n % 2 == 0] + [False] * (len(dom) - 1)))


def write_dir(path: Path, samples: list[Sample], hdr: ShardHeader, per_shard: int, extra=None) -> Path:
    path.mkdir(parents=True)
    infos = []
    for s, start in enumerate(range(0, len(samples), per_shard)):
        with ShardWriter(path / shard_name(s), hdr, block=4) as w:
            for sample in samples[start:start + per_shard]:
                w.write(encode_sample(sample, hdr))
        infos.append(w.info)
    write_json(path / "manifest.json", manifest_dict(hdr, infos, extra=extra))
    return path


# A clustered-like distribution over the 3 object classes: every ordered pair k != j, with
# 1 + k + 2j samples each (so the counts differ per cell), and δ values away from bin edges.
PAIR_COUNTS = {(k, j): 1 + k + 2 * j for k in range(3) for j in range(3) if k != j}
DELTAS = [0.52, 0.71, 0.74, 0.86, 0.97, 1.0, 0.93, 0.81]


def clustered_samples() -> list[Sample]:
    out = []
    for (k, j), count in sorted(PAIR_COUNTS.items()):
        for _ in range(count):
            n = len(out)
            out.append(make_sample(n, [k + 1], [j + 1], (k, j), DELTAS[n % len(DELTAS)]))
    return out


@pytest.fixture
def mixed_dir(tmp_path):
    samples = clustered_samples()
    return write_dir(tmp_path / "mixed", samples, header(), per_shard=15, extra={"skipped_pairs": 4}), samples


@pytest.fixture
def random_dir(tmp_path):
    samples = [
        make_sample(0, [1, 2], [3], (-1, -1), 0.8),  # cat->car and dog->car from class sets
        make_sample(1, [3], [3], (-1, -1), 0.9),  # car->car, same category
        make_sample(2, [1], [], (-1, -1), 0.75),  # a phantom with no object: no pair at all
        make_sample(3, [2], [1], (1, 0), 0.95),  # a recorded pair wins over class sets
    ]
    return write_dir(tmp_path / "random", samples, header(strategy="random"), per_shard=10), samples


@pytest.fixture
def standard_dir(tmp_path):
    samples = [make_sample(n, [1 + n % 3], [], (-1, -1), 1.0, standard=True) for n in range(5)]
    return write_dir(tmp_path / "train", samples, header("standard", strategy="none"), per_shard=5), samples


def exact_count(rgb: np.ndarray, colour) -> int:
    return int(np.all(rgb == np.array(colour, dtype=np.uint8), axis=-1).sum())


def read_png(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"{path} is not a readable image"
    return bgr[:, :, ::-1]


def doc_block(marker: str) -> str:
    """The ```python block right after ``<!-- test: MARKER ...-->`` in docs/format.md."""
    m = re.search(r"<!-- test: " + re.escape(marker) + r"[^>]*-->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"no block marked {marker!r} in {DOC}"
    return m.group(1)


def one_line_error(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# -- inspect ----------------------------------------------------------------------------------
def test_inspect_text_shows_schema_attributes_and_rows_with_class_names(mixed_dir):
    path, samples = mixed_dir
    text = format_inspect(inspect(InspectConfig(path=path / "shard-00000.h5", limit=6)))
    schema = text.split("schema:")[1].split("attributes:")[0]
    for name in SCHEMA:
        assert re.search(rf"^  {name}\s", schema, re.M), name
    assert re.search(r"^  pair\s+int16\s+15x2\s+infx2\s+4x2\s", schema, re.M)  # dtype, shape, max, chunks
    assert re.search(r"^  image\s+vlen uint8\s", schema, re.M)
    assert re.search(r"^  key\s+str \(utf-8\)\s", schema, re.M)
    assert "format: blendgen-shards" in text
    assert "class_names [4]: background, cat, dog, car" in text
    assert "generation.strategy: clustered" in text and "generation.delta: [0.7, 1.0]" in text
    assert "palette [256 x 3]: (0, 0, 0) (128, 0, 0) (0, 128, 0) (128, 128, 0)" in text
    rows = [line for line in text.splitlines() if re.match(r"^  \d+\s+s\d{4}", line)]
    assert len(rows) == 6 and "(6 of 15 shown" in text
    first = samples[0]  # cat -> dog, pair (0, 1)
    assert rows[0].split() == ["0", first.key, first.dominant_id, first.phantom_id, f"{first.delta:.3f}",
                               "32x48", "cat", "dog", "cat->dog", "2", "1/1"]


def test_inspect_json_rows_match_the_written_records(mixed_dir):
    path, samples = mixed_dir
    result = CliRunner().invoke(blendgen, ["inspect", str(path / "shard-00001.h5"), "--json", "--limit", "50"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [d["name"] for d in report["schema"]] == list(SCHEMA)
    assert {d["name"]: d["chunks"] for d in report["schema"]}["delta"] == [4]
    assert report["attrs"]["class_names"] == list(CLASSES.names)
    assert report["attrs"]["generation.seed"] == 3 and report["attrs"]["kind"] == "mixed"
    written = samples[15:]
    assert report["num_samples"] == len(report["samples"]) == len(written)
    names = CLASSES.names
    for row, s in zip(report["samples"], written):
        assert (row["key"], row["dominant_id"], row["phantom_id"]) == (s.key, s.dominant_id, s.phantom_id)
        assert row["delta"] == pytest.approx(s.delta, abs=1e-6)
        assert row["dominant_classes"] == [names[c] for c in s.dominant_classes]
        assert row["phantom_classes"] == [names[c] for c in s.phantom_classes]
        assert tuple(row["pair"]) == s.pair
        assert row["occluded"] == [int(o) for o in s.occluded]


def test_inspect_directory_summarises_manifest_and_picks_a_shard(mixed_dir):
    path, samples = mixed_dir
    text = format_inspect(inspect(InspectConfig(path=path, limit=3)))
    assert f"samples: {len(samples)}  shards: 2" in text
    assert "shard-00000.h5 15, shard-00001.h5 9" in text
    assert 'generation: strategy="clustered", delta=[0.7, 1.0], seed=3' in text
    assert "skipped_pairs: 4" in text  # a writer's extra manifest key is shown, not dropped
    assert f"shard {path / 'shard-00000.h5'}: 15 samples" in text
    second = inspect(InspectConfig(path=path, shard="shard-00001.h5", limit=1))
    assert second["samples"][0]["key"] == samples[15].key


def test_inspect_index_shows_one_sample_with_its_encoded_sizes(mixed_dir):
    path, samples = mixed_dir
    report = inspect(InspectConfig(path=path / "shard-00000.h5", index=7))
    (row,) = report["samples"]
    assert row["index"] == 7 and row["key"] == samples[7].key
    with h5py.File(path / "shard-00000.h5") as f:
        assert row["bytes"]["image"] == len(f["image"][7]) > 0
    assert "encoded bytes: image" in format_inspect(report)


# -- the picture ------------------------------------------------------------------------------
def test_render_mixed_sample_draws_both_label_maps_and_overlays(mixed_dir, tmp_path):
    path, samples = mixed_dir
    out = tmp_path / "pics" / "sample.png"
    index = 3  # cat (G_a, left half) with car (G_b, right half): pair (0, 2)
    assert samples[index].dominant_classes == (1,) and samples[index].phantom_classes == (3,)
    report = inspect(InspectConfig(path=path / "shard-00000.h5", index=index, out=out))
    assert report["rendered"] == str(out)
    rgb = read_png(out)
    assert rgb.shape[0] > 500 and rgb.shape[1] > 800  # a 32x48 sample is drawn large
    # A legend patch is a few hundred pixels; each colour map panel shows its class over
    # thousands, so these counts prove that G_a and G_b themselves are drawn.
    assert exact_count(rgb, CAT) > 5000
    assert exact_count(rgb, CAR) > 5000
    assert exact_count(rgb, DOG) == 0  # dog is in neither map
    overlay_cat = tuple(int(np.rint(0.5 * GRAY + 0.5 * c)) for c in CAT)  # (114, 50, 50)
    overlay_car = tuple(int(np.rint(0.5 * GRAY + 0.5 * c)) for c in CAR)  # (114, 114, 50)
    assert exact_count(rgb, overlay_cat) > 5000 and exact_count(rgb, overlay_car) > 5000
    assert exact_count(rgb, VOID) > 200  # the void rows of both maps
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # written atomically


def test_render_standard_sample_shows_image_and_label(standard_dir, tmp_path):
    path, samples = standard_dir
    out = tmp_path / "standard.png"
    inspect(InspectConfig(path=path, index=1, out=out))  # dog only
    rgb = read_png(out)
    assert exact_count(rgb, DOG) > 5000
    assert exact_count(rgb, CAT) == 0 and exact_count(rgb, CAR) == 0


def test_render_keeps_tiny_images_legible(tmp_path):
    hdr = header()
    sample = make_sample(0, [1], [2], (0, 1), 0.8, hw=(8, 10))
    path = write_dir(tmp_path / "tiny", [sample], hdr, per_shard=1)
    out = tmp_path / "tiny.png"
    inspect(InspectConfig(path=path, index=0, out=out))
    rgb = read_png(out)
    assert exact_count(rgb, CAT) > 5000 and exact_count(rgb, DOG) > 5000  # 8x10 maps upscaled, not 80 pixels


# -- stats ------------------------------------------------------------------------------------
def hand_counts(samples) -> np.ndarray:
    counts = np.zeros((3, 3), dtype=np.int64)
    for s in samples:
        if s.pair[0] >= 0:
            counts[s.pair[0], s.pair[1]] += 1
        else:
            for a in s.dominant_classes:
                for b in s.phantom_classes:
                    counts[a - 1, b - 1] += 1
    return counts


def hand_histogram(deltas) -> list[int]:
    bins = [0] * 10
    for d in deltas:
        bins[min(9, int((d - 0.5) / 0.05))] += 1
    return bins


def test_stats_counts_equal_hand_counts_for_a_clustered_directory(mixed_dir):
    path, samples = mixed_dir
    s = stats(StatsConfig(path=path), progress=False)
    expected = hand_counts(samples)
    assert s["pair_counts"] == expected.tolist()
    assert expected[0, 2] == 5 and expected[1, 2] == 6  # cat->car, dog->car: 1 + k + 2j
    assert s["samples"] == len(samples) == 24
    assert (s["pairs_present"], s["pairs_possible"]) == (6, 6)
    assert (s["pair_count_min"], s["pair_count_median"], s["pair_count_max"]) == (2, 4.0, 6)  # 2 3 3 5 5 6
    assert s["same_category"] == 0 and s["missing_pairs"] == []
    assert s["as_dominant"] == expected.sum(axis=1).tolist()
    assert s["delta_counts"] == hand_histogram([x.delta for x in samples])
    text = format_stats(s)
    assert "ordered pairs k != j present: 6 / 6 (100.0%)" in text
    assert "count per present pair: min 2, median 4, max 6" in text
    assert "most frequent: dog->car 6" in text
    assert re.search(r"\[0\.950, 1\.000\]\s+%d\s" % hand_histogram([x.delta for x in samples])[9], text)


def test_stats_falls_back_to_class_sets_and_names_missing_pairs(random_dir):
    path, samples = random_dir
    s = stats(StatsConfig(path=path), progress=False)
    assert s["pair_counts"] == hand_counts(samples).tolist()
    assert (s["samples_with_pair"], s["samples_from_class_sets"], s["samples_without_pair"]) == (1, 2, 1)
    assert s["same_category"] == 1  # car->car
    assert s["pairs_present"] == 3  # cat->car, dog->car, dog->cat
    assert ["cat", "dog"] in s["missing_pairs"] and ["dog", "cat"] not in s["missing_pairs"]
    assert "missing (3): cat->dog, car->cat, car->dog" in format_stats(s)


def test_stats_checks_the_bytes_it_does_not_decode(mixed_dir):
    # stats decodes no image, but a shard whose images are gone or damaged is not counted
    path, _ = mixed_dir
    stats(StatsConfig(path=path), progress=False)
    shard = ShardDir.open(path).shard_paths[0]
    with h5py.File(shard, "a") as f:
        del f["image"]
    with pytest.raises(ShardError, match="dataset 'image' missing"):
        stats(StatsConfig(path=path), progress=False)


def test_stats_of_standard_samples_has_no_pairs_and_delta_one(standard_dir):
    path, samples = standard_dir
    s = stats(StatsConfig(path=path, bins=5), progress=False)
    assert s["pairs_present"] == 0 and s["samples_without_pair"] == 5
    assert s["delta_counts"] == [0, 0, 0, 0, 5]
    assert "class pairs: none" in format_stats(s)


def test_stats_png_and_cli(mixed_dir, tmp_path):
    path, _ = mixed_dir
    out = tmp_path / "stats.png"
    result = CliRunner().invoke(blendgen, ["stats", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "6 / 6" in result.output and f"wrote {out}" in result.output
    rgb = read_png(out)
    assert rgb.shape[0] > 300 and rgb.shape[1] > 600
    s = stats(StatsConfig(path=path, out=tmp_path / "again.png"), progress=False)
    assert read_png(tmp_path / "again.png").shape == rgb.shape
    write_stats_png(s, tmp_path / "third.png")
    assert read_png(tmp_path / "third.png").shape == rgb.shape


# -- the format as h5dump sees it -------------------------------------------------------------
def test_shard_attributes_are_plain_values_and_still_round_trip(mixed_dir):
    path, _ = mixed_dir
    shard = path / "shard-00000.h5"
    with h5py.File(shard) as f:
        assert list(f.attrs["generation.delta"]) == [0.7, 1.0]  # a numeric array, not a JSON string
        assert f.attrs["source.kind"] == "voc" and f.attrs["generation.strategy"] == "clustered"
        assert [str(n) for n in f.attrs["class_names"]] == list(CLASSES.names)
        for name in SCHEMA:
            assert f[name].attrs["description"], name
    hdr = ShardReader(shard).header
    assert hdr.generation == header().generation and hdr.source == header().source


@pytest.mark.skipif(shutil.which("h5ls") is None, reason="hdf5-tools not installed")
def test_h5ls_lists_every_dataset(mixed_dir):
    path, _ = mixed_dir
    out = subprocess.run(["h5ls", "-r", str(path / "shard-00000.h5")], capture_output=True, text=True, check=True)
    listed = {line.split()[0].lstrip("/") for line in out.stdout.splitlines() if "Dataset" in line}
    assert listed == set(SCHEMA)


# -- docs/format.md ---------------------------------------------------------------------------
def test_doc_h5py_snippet_reads_a_sample(tmp_path, monkeypatch, capsys):
    sample = make_sample(0, [1, 3], [2], (0, 1), 0.83)
    write_dir(tmp_path / "out" / "mixed", [sample], header(), per_shard=1)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(doc_block("read-with-h5py"), str(DOC), "exec"), ns)
    assert ns["key"] == sample.key and ns["delta"] == pytest.approx(0.83)
    np.testing.assert_array_equal(ns["image"], sample.image)
    np.testing.assert_array_equal(ns["label"], sample.label)
    np.testing.assert_array_equal(ns["phantom"], sample.phantom_label)
    assert ns["names"] == list(CLASSES.names)
    assert "['background', 'cat', 'car']" in capsys.readouterr().out


def test_doc_write_example_makes_the_listed_shard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(doc_block("write-example"), str(DOC), "exec"), {})
    shards = ShardDir.open("example")
    shards.verify()
    sample = shards.readers()[0].read(0)
    assert (sample.key, sample.pair) == ("000000-007", (7, 11))
    assert (sample.dominant_classes, sample.phantom_classes) == ((8,), (12,))
    # The doc's h5ls listing is of this shard: same datasets, same length.
    listing = DOC.read_text().split("$ h5ls -r example/shard-00000.h5\n")[1].split("```")[0]
    listed = {line.split()[0].lstrip("/"): line.split("{")[1] for line in listing.splitlines() if "Dataset" in line}
    assert set(listed) == set(SCHEMA)
    assert listed["pair"] == "1/Inf, 2}" and listed["key"] == "1/Inf}"
    # ... and its h5dump -A listing shows exactly the root attributes the writer writes now.
    dump = DOC.read_text().split("$ h5dump -A example/shard-00000.h5\n")[1].split("```")[0]
    with h5py.File("example/shard-00000.h5") as f:
        assert set(re.findall(r'^   ATTRIBUTE "([^"]+)"', dump, re.M)) == set(f.attrs)
        assert f'(0): "{f.attrs["generation"]}"' in dump


# -- the command line -------------------------------------------------------------------------
def test_cli_inspect_runs_as_a_real_subprocess(mixed_dir, tmp_path):
    path, samples = mixed_dir
    exe = str(Path(sys.executable).with_name("blendgen"))  # the installed console script
    ok = subprocess.run([exe, "inspect", str(path), "--limit", "2"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert samples[1].key in ok.stdout and samples[2].key not in ok.stdout
    bad = subprocess.run([exe, "inspect", str(tmp_path / "nowhere.h5")], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "nowhere.h5: no such file or directory" in bad.stderr


@pytest.mark.parametrize("case, fragment", [
    ("missing", "no such file or directory"),
    ("text file", "not a readable HDF5 file"),
    ("foreign hdf5", "not a blendgen-shards file"),
    ("index out of range", "sample 99 out of range"),
    ("unknown shard", "no shard 'shard-00009.h5' in the manifest"),
    ("directory without manifest", "missing; not a shard directory"),
    ("out not png", "expected a .png path"),
    ("stats of a missing directory", "no such file or directory"),
    ("shard missing a dataset", "dataset 'label' missing"),
])
def test_bad_input_is_a_one_line_error(mixed_dir, tmp_path, case, fragment):
    path, _ = mixed_dir
    (tmp_path / "notes.h5").write_text("not hdf5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    (tmp_path / "empty").mkdir()
    shutil.copy(path / "shard-00000.h5", tmp_path / "cut.h5")
    with h5py.File(tmp_path / "cut.h5", "a") as f:
        del f["label"]
    args = {
        "missing": ["inspect", str(tmp_path / "gone.h5")],
        "text file": ["inspect", str(tmp_path / "notes.h5")],
        "foreign hdf5": ["inspect", str(tmp_path / "other.h5")],
        "index out of range": ["inspect", str(path / "shard-00001.h5"), "--index", "99"],
        "unknown shard": ["inspect", str(path), "--shard", "shard-00009.h5"],
        "directory without manifest": ["inspect", str(tmp_path / "empty")],
        "out not png": ["inspect", str(path), "--out", str(tmp_path / "x.jpg")],
        "stats of a missing directory": ["stats", str(tmp_path / "gone"), "--quiet"],
        "shard missing a dataset": ["inspect", str(tmp_path / "cut.h5")],
    }[case]
    line = one_line_error(CliRunner().invoke(blendgen, args))
    assert fragment in line
