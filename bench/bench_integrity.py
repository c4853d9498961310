"""Benchmark of the integrity checks: what the per-sample checksum adds to a sample's read +
decode, and what the damaged-JPEG check adds to reading a source JPEG, side by side in one run.

    python bench/bench_integrity.py                       # ~1 min on 2 cores
    python bench/bench_integrity.py --size 513 --samples 300

A shard of ``--samples`` blended samples (smooth synthetic scenes, JPEG q95, two label maps)
is written with the real writer, in rounds alternating its in-memory build (the default) with
HDF5 writing the file directly (the encoding is done before, so only the writing is timed);
then rounds alternate reading every sample with the checksum
checked and with it off (``ShardReader(check=False)``), each read decoded as the trainer
decodes it (``ShardReader.read``). Alternating treats both alike on a machine whose load
changes; the median round of each is reported, and the ratio. The reader's one-off work per
shard (the small fields' share of each checksum, computed when the columns load) is timed
apart. The JPEG check is timed the same way against a full OpenCV decode of the same bytes.

Results are printed and written to bench/results/bench_integrity.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blendgen.datasets.classes import VOC  # noqa: E402
from blendgen.datasets.files import jpeg_damage  # noqa: E402
from blendgen.shards.reader import ShardReader  # noqa: E402
from blendgen.shards.schema import Sample, ShardHeader, encode_sample  # noqa: E402
from blendgen.shards.writer import ShardWriter  # noqa: E402


def scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image with a few flat objects: JPEG sizes near those of photos of the demo."""
    label = np.zeros((h, w), np.uint8)
    for _ in range(3):
        y, x = int(rng.integers(0, h - h // 4)), int(rng.integers(0, w - w // 4))
        label[y:y + h // 4, x:x + w // 4] = int(rng.integers(1, 21))
    base = cv2.resize(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8), (w, h))
    image = np.clip(base.astype(int) + 3 * label[..., None], 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(image, (5, 5), 0), label


def make_records(n: int, size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        h, w = size, int(size * 4 / 3)
        a, la = scene(rng, h, w)
        b, lb = scene(rng, h, w)
        delta = float(rng.uniform(0.7, 1.0))
        image = np.round(delta * a + (1 - delta) * b).astype(np.uint8)
        records.append(encode_sample(Sample(key=f"s{i:05d}", image=image, label=la, phantom_label=lb, delta=delta,
                                            dominant_id=f"a{i}", phantom_id=f"b{i}"), HEADER))
    return records


HEADER = ShardHeader(kind="mixed", classes=VOC)


def write_shard(path: Path, records: list[dict], in_memory: bool = True) -> float:
    """Seconds per sample to write (checksums, HDF5, the file, its verification) encoded records."""
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    with ShardWriter(path, HEADER, in_memory=in_memory) as writer:
        for record in records:
            writer.write(record)
    return (time.perf_counter() - start) / len(records)


def time_reads(path: Path, check: bool) -> float:
    """Seconds per sample: read + checksum (if on) + decode, columns already loaded."""
    reader = ShardReader(path, check=check)
    reader.read(0)  # load the columns: a one-off cost per reader, timed in column_load
    start = time.perf_counter()
    for i in range(len(reader)):
        reader.read(i)
    seconds = (time.perf_counter() - start) / len(reader)
    reader.close()
    return seconds


def time_column_load(path: Path, check: bool) -> float:
    reader = ShardReader(path, check=check)
    start = time.perf_counter()
    reader.key(0)
    seconds = time.perf_counter() - start
    reader.close()
    return seconds


def time_jpeg(data: bytes, repeat: int) -> tuple[float, float]:
    buf = np.frombuffer(data, np.uint8)
    start = time.perf_counter()
    for _ in range(repeat):
        cv2.imdecode(buf, cv2.IMREAD_COLOR)
    decode = (time.perf_counter() - start) / repeat
    start = time.perf_counter()
    for _ in range(repeat):
        jpeg_damage(data)
    check = (time.perf_counter() - start) / repeat
    return decode, check


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--size", type=int, default=160, help="image height (width 4/3 of it); the demo's are ~120-200")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_integrity.json")
    args = p.parse_args()
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard-00000.h5"
        records = make_records(args.samples, args.size)
        memory, disk = [], []
        for _ in range(args.rounds):
            disk.append(write_shard(path, records, in_memory=False))
            memory.append(write_shard(path, records, in_memory=True))
        on, off, load_on, load_off = [], [], [], []
        for _ in range(args.rounds):
            on.append(time_reads(path, True))
            off.append(time_reads(path, False))
            load_on.append(time_column_load(path, True))
            load_off.append(time_column_load(path, False))
        sample_bytes = path.stat().st_size / args.samples

    rng = np.random.default_rng(1)
    image, _ = scene(rng, 375, 500)  # a VOC-sized source JPEG
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    jpeg_rounds = [time_jpeg(jpeg.tobytes(), 50) for _ in range(args.rounds)]

    med = statistics.median
    result = {
        "samples": args.samples, "image_size": [args.size, int(args.size * 4 / 3)], "rounds": args.rounds,
        "sample_bytes": round(sample_bytes),
        "write_ms_in_memory": round(1e3 * med(memory), 4),
        "write_ms_hdf5_to_disk": round(1e3 * med(disk), 4),
        "write_in_memory_vs_disk_ratio": round(med(memory) / med(disk), 3),
        "read_decode_ms_checked": round(1e3 * med(on), 4),
        "read_decode_ms_unchecked": round(1e3 * med(off), 4),
        "checksum_cost_ratio": round(med(on) / med(off), 4),
        "column_load_ms_checked": round(1e3 * med(load_on), 3),
        "column_load_ms_unchecked": round(1e3 * med(load_off), 3),
        "column_load_per_sample_ms_added": round(1e3 * (med(load_on) - med(load_off)) / args.samples, 4),
        "jpeg_500x375_decode_ms": round(1e3 * med(r[0] for r in jpeg_rounds), 3),
        "jpeg_500x375_damage_check_ms": round(1e3 * med(r[1] for r in jpeg_rounds), 3),
    }
    result["jpeg_check_vs_decode_ratio"] = round(result["jpeg_500x375_damage_check_ms"]
                                                 / result["jpeg_500x375_decode_ms"], 3)
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
