"""Benchmark ``build-clusters`` against the floor of decoding the same label PNGs.

    python bench/bench_clusters.py --images 3000 --workers 2

Writes a VOC-layout dataset of VOC-sized (500x375-ish) palette labels and JPEG images into a
temporary folder (kept under bench/results/ with --keep), then times, side by side:
  floor      a bare loop that only decodes the label PNGs (same decoder: Pillow), 1 process
  floor to array   the same, also converting each decoded label to a numpy array
  floor + histogram  decode and count label values (Pillow), the least a class-set scan can do
  scan w=1   build-clusters' per-image work in one process (decode + histogram + checks + header)
  scan w=N   the same with N worker processes
  whole      the whole command with N workers, including writing the outputs and the heat map
and prints images/s and the ratios (target: w=1 within 10% of the floor; w=2 near 2x w=1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from blendgen.datasets.files import read_label_png  # noqa: E402
from blendgen.datasets.registry import open_reader  # noqa: E402
from blendgen.generation.clusters import ClusterConfig, build_clusters, scan_class_sets  # noqa: E402
from tests.voc_fixture import write_palette_png  # noqa: E402


def make_dataset(root: Path, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = [f"b{i:06d}" for i in range(n)]
    (root / "JPEGImages").mkdir(parents=True)
    for image_id in ids:
        h, w = int(rng.integers(330, 500)), int(rng.integers(330, 500))
        label = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            c = int(rng.integers(1, 21))
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(20, w // 2)), int(rng.integers(20, h // 2)))
            cv2.ellipse(label, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, 5)  # void band
            cv2.ellipse(label, center, (max(1, axes[0] - 3), max(1, axes[1] - 3)), 0, 0, 360, c, -1)
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", label)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), image)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(ids) + "\n")
    return ids


def _label_paths(root: Path, ids: list[str]) -> list[Path]:
    return [root / "SegmentationClass" / f"{image_id}.png" for image_id in ids]


def _time_per_label(root: Path, ids: list[str], work) -> float:
    paths = _label_paths(root, ids)
    t = time.perf_counter()
    for path in paths:
        work(path)
    return time.perf_counter() - t


def _decode(path: Path) -> None:
    with Image.open(path) as im:
        im.load()


def _decode_and_count(path: Path) -> None:
    with Image.open(path) as im:
        im.histogram()


def time_floor(root: Path, ids: list[str]) -> float:
    """Decode every label PNG (Pillow, the decoder build-clusters uses), nothing else."""
    return _time_per_label(root, ids, _decode)


def time_floor_histogram(root: Path, ids: list[str]) -> float:
    """Decode and count the label values: the least any class-set computation must do."""
    return _time_per_label(root, ids, _decode_and_count)


def time_floor_array(root: Path, ids: list[str]) -> float:
    """Decode every label PNG into a numpy array, as any per-pixel consumer must."""
    return _time_per_label(root, ids, read_label_png)


def time_scan(root: Path, workers: int, check_images: bool = True) -> float:
    """The part of build-clusters that grows with the image count: every label decoded,
    histogrammed, checked; results gathered in order."""
    reader = open_reader("voc", root, "train")
    t = time.perf_counter()
    for _ in scan_class_sets(reader, workers, check_images, progress=False):
        pass
    return time.perf_counter() - t


def time_build(root: Path, out: Path, workers: int) -> float:
    """The whole command, including the fixed cost of writing the outputs and heat map."""
    t = time.perf_counter()
    build_clusters(ClusterConfig(dataset="voc", root=root, out=out, workers=workers), progress=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each measurement")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "voc"
        t = time.perf_counter()
        ids = make_dataset(root, args.images)
        print(f"dataset: {len(ids)} images written in {time.perf_counter() - t:.1f}s")
        time_floor(root, ids[:200])  # warm the page cache and imports
        rows = []
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
            rows.append({
                "floor": time_floor(root, ids),
                "floor to array": time_floor_array(root, ids),
                "floor + histogram": time_floor_histogram(root, ids),
                "scan w=1": time_scan(root, 1),
                "scan w=1 no header": time_scan(root, 1, check_images=False),
                f"scan w={args.workers}": time_scan(root, args.workers),
                f"whole command w={args.workers}": time_build(root, Path(tmp) / "o", args.workers),
            })
        best = {k: min(r[k] for r in rows) for k in rows[0]}
        n = len(ids)
        print(f"{'measure':<24}{'seconds':>9}{'images/s':>10}{'vs floor':>10}")
        for k, v in best.items():
            print(f"{k:<24}{v:>9.2f}{n / v:>10.0f}{best['floor'] / v:>10.2f}")
        w = args.workers
        print(f"per-worker efficiency, scan w=1 vs floor: {best['floor'] / best['scan w=1']:.2f}; "
              f"vs floor + histogram: {best['floor + histogram'] / best['scan w=1']:.2f}; "
              f"without image headers: {best['floor + histogram'] / best['scan w=1 no header']:.2f}")
        print(f"speed-up of scan w={w} over w=1: {best['scan w=1'] / best[f'scan w={w}']:.2f}x")


if __name__ == "__main__":
    main()
