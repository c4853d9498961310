"""``blendgen build-clusters``: per-image class sets, the co-occurrence matrix, the clusters.

IJCV Algorithm 1: for each training image take the set U of object classes in its ground
truth (background and the ignore index removed); for every ordered pair (i, m), i != m, in U,
``C[i, m] += 1``. C is N x N over the N object classes, symmetric with a zero diagonal:
equivalently ``C = P^T P`` with the diagonal zeroed, P the image x class presence matrix.
The diagonal of ``P^T P`` (images per class) is kept as ``class_counts``. Cluster k is the set
of images whose ground truth contains object class k (BMVC 3.1); an image with several classes
is in several clusters.

What goes to ``out/`` (format version 1, read back by :meth:`ClusterIndex.load`):

``clusters.npz``
    ``ids`` (n,) str, ``sizes`` (n, 2) int32 H, W, ``presence`` (n, N) bool,
    ``cooccurrence`` (N, N) int64, ``class_counts`` (N,) int64, ``object_ids`` (N,) int64
    (the label id of each matrix row/column).
``dataset.json``
    format version, tool version, the source dataset (kind, root, split), the class set
    (names, background ids, ignore index, palette) and the summary counts.
``cooccurrence.csv``, ``class_counts.csv``, ``cooccurrence.png``
    the same numbers for people: CSV with class names, and a heat map.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..datasets.base import Reader
from ..datasets.classes import ClassSet, check_label_values
from ..datasets.files import DatasetError
from ..datasets.registry import open_reader
from ..io import atomic_path, make_dir, save_figure, write_json

FORMAT_VERSION = 1

# Bytes one blended sample takes on disk per pixel of its dominant image, at mix's defaults
# (image JPEG q95 4:2:0, dominant and phantom labels as PNG): 0.51 measured on a 480x360
# street-scene set (3.1 GB for 35,340 samples, issue 11), ~0.45 on 500x375 VOC-like scenes
# (74 KiB per image, docs/storage.md, plus the labels). An estimate to size a run by, not a promise:
# photos with much fine texture compress worse.
MIXED_BYTES_PER_PIXEL = 0.5


@dataclass(frozen=True)
class ClusterConfig:
    dataset: str
    root: Path
    out: Path
    split: str = "train"
    workers: int = 1
    check_images: bool = True  # also open each image header: missing image, size mismatch
    reader_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")


# -- the per-image step (runs in worker processes) -------------------------------------------
def image_class_ids(reader: Reader, image_id: str, check_images: bool = True) -> tuple[int, int, np.ndarray]:
    """(H, W, object class ids present) for one image: one label decode and one histogram."""
    hist, (h, w) = reader.label_histogram(image_id)
    path = reader.label_path(image_id)
    present = hist > 0  # (256,) bool
    allowed, objects = _value_masks(reader.classes)
    if (present & ~allowed).any():
        check_label_values(hist, reader.classes, path)  # raises, naming the values
    if check_images:
        image_hw = reader.image_size(image_id)
        if image_hw != (h, w):
            raise DatasetError(
                f"{path}: label is {w}x{h} but image {reader.image_path(image_id).name} is {image_hw[1]}x{image_hw[0]}"
            )
    return h, w, np.flatnonzero(present & objects)


@functools.lru_cache(maxsize=8)
def _value_masks(classes: ClassSet) -> tuple[np.ndarray, np.ndarray]:
    """(256,) bool masks over label values: allowed in a label map; object classes."""
    allowed = np.zeros(256, dtype=bool)
    allowed[: classes.num_classes] = True
    allowed[classes.ignore_index] = True
    objects = np.zeros(256, dtype=bool)
    objects[classes.object_ids] = True
    return allowed, objects


_WORKER_READER: Reader | None = None
_WORKER_CHECK = True


def _init_worker(reader: Reader, check_images: bool) -> None:
    global _WORKER_READER, _WORKER_CHECK
    _WORKER_READER, _WORKER_CHECK = reader, check_images


def _worker_step(image_id: str):
    return image_class_ids(_WORKER_READER, image_id, _WORKER_CHECK)


# -- the matrix ---------------------------------------------------------------------------
def cooccurrence_from_presence(presence: np.ndarray) -> np.ndarray:
    """``C = P^T P`` with the diagonal zeroed. ``presence``: (n, N) bool."""
    p = presence.astype(np.int64)
    c = p.T @ p
    np.fill_diagonal(c, 0)
    return c


@dataclass
class ClusterIndex:
    """Everything ``build-clusters`` computes; the one thing ``mix`` and ``trainer`` read."""

    classes: ClassSet
    ids: np.ndarray  # (n,) str
    sizes: np.ndarray  # (n, 2) int32: H, W
    presence: np.ndarray  # (n, N) bool, columns = classes.object_ids
    cooccurrence: np.ndarray  # (N, N) int64
    class_counts: np.ndarray  # (N,) int64
    source: dict

    @property
    def object_names(self) -> list[str]:
        return [self.classes.names[i] for i in self.classes.object_ids]

    def cluster(self, k: int) -> np.ndarray:
        """Row indices (into ``ids``) of the images in cluster k (matrix index k)."""
        return np.flatnonzero(self.presence[:, k])

    def clusters(self) -> list[np.ndarray]:
        return [self.cluster(k) for k in range(self.presence.shape[1])]

    def summary(self) -> dict:
        empty = [name for name, n in zip(self.object_names, self.class_counts) if n == 0]
        per_image = self.presence.sum(axis=1)  # (n,) object classes of each image
        return {
            "images": int(len(self.ids)),
            "object_classes": int(self.presence.shape[1]),
            "images_without_objects": int((~self.presence.any(axis=1)).sum()),
            "empty_clusters": empty,
            "cluster_sizes": {n: int(c) for n, c in zip(self.object_names, self.class_counts)},
            "cooccurring_pairs": int(np.count_nonzero(np.triu(self.cooccurrence))),
            "possible_pairs": int(self.presence.shape[1] * (self.presence.shape[1] - 1) // 2),
            # images holding 0, 1, 2, ... object classes: how far SourceSep-CM's γ is exceeded
            "classes_per_image": np.bincount(per_image, minlength=self.presence.shape[1] + 1).tolist(),
            "expected_mix": expected_mix(self.presence, self.sizes),
        }

    # -- persistence ------------------------------------------------------------------------
    def save(self, out: str | Path) -> None:
        out = make_dir(out)
        with atomic_path(out / "clusters.npz") as tmp:
            np.savez(
                tmp,
                ids=self.ids.astype(str), sizes=self.sizes, presence=self.presence,
                cooccurrence=self.cooccurrence, class_counts=self.class_counts,
                object_ids=self.classes.object_ids,
            )
        names = self.object_names
        with atomic_path(out / "cooccurrence.csv") as tmp:
            rows = [",".join(["class"] + names)]
            rows += [",".join([n] + [str(v) for v in row]) for n, row in zip(names, self.cooccurrence)]
            tmp.write_text("\n".join(rows) + "\n")
        with atomic_path(out / "class_counts.csv") as tmp:
            tmp.write_text("class,images\n" + "".join(f"{n},{c}\n" for n, c in zip(names, self.class_counts)))
        write_heatmap(self, out / "cooccurrence.png")
        # Written last: its presence says the rest is complete.
        write_json(out / "dataset.json", {
            "format": "blendgen-clusters",
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "source": self.source,
            "classes": self.classes.to_json(),
            "summary": self.summary(),
        })

    @classmethod
    def load(cls, out: str | Path) -> "ClusterIndex":
        out = Path(out)
        meta_path, npz_path = out / "dataset.json", out / "clusters.npz"
        for p in (meta_path, npz_path):
            if not p.is_file():
                raise DatasetError(f"{p}: missing; run `blendgen build-clusters --out {out}` first")
        import json

        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "blendgen-clusters" or meta.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{meta_path}: not a blendgen-clusters v{FORMAT_VERSION} file")
        classes = ClassSet.from_json(meta["classes"])
        with np.load(npz_path) as z:
            if not np.array_equal(z["object_ids"], classes.object_ids):
                raise DatasetError(f"{npz_path}: object ids disagree with {meta_path.name}")
            return cls(classes=classes, ids=z["ids"], sizes=z["sizes"], presence=z["presence"],
                       cooccurrence=z["cooccurrence"], class_counts=z["class_counts"], source=meta["source"])


def clustered_samples_per_image(presence: np.ndarray) -> np.ndarray:
    """(n,) rows the clustered plan (C_fb) gives each image as the dominant, without making it.

    Image a is paired, for every cluster k it is in and every other cluster j, with a phantom
    from j other than a itself (:func:`blendgen.generation.plan.clustered_rows`); the pair is skipped when
    j holds no other image. So a gets ``sum over k in U_a of #{j != k: |j| - [a in j] > 0}``."""
    presence = np.asarray(presence, dtype=bool)
    usable = (presence.sum(axis=0)[None, :] - presence) > 0  # (n, N): cluster j has a phantom for a
    per_k = usable.sum(axis=1, keepdims=True) - usable  # (n, N): usable j != k, for each k
    return (presence * per_k).sum(axis=1).astype(np.int64)


def expected_mix(presence: np.ndarray, sizes: np.ndarray) -> dict:
    """What ``blendgen mix`` (clustered, the default) will write: samples exactly, bytes as
    an estimate (:data:`MIXED_BYTES_PER_PIXEL` times the dominant images' pixels)."""
    per_image = clustered_samples_per_image(presence)
    pixels = int((per_image * sizes[:, 0].astype(np.int64) * sizes[:, 1]).sum()) if len(per_image) else 0
    return {
        "strategy": "clustered",
        "samples": int(per_image.sum()),
        "samples_per_source_image": round(float(per_image.mean()), 3) if len(per_image) else 0.0,
        "bytes_estimate": int(pixels * MIXED_BYTES_PER_PIXEL),
    }


def write_heatmap(index: ClusterIndex, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = index.object_names
    n = len(names)
    size = min(max(5.0, 0.32 * n + 2), 24.0)  # 150 classes (ADE20K): 2400 px, 0.9 s; 5000 px took 3 s
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    im = ax.imshow(np.log1p(index.cooccurrence), cmap="viridis")
    ax.set_xticks(range(n), names, rotation=90, fontsize=7 if n <= 30 else 4)
    ax.set_yticks(range(n), names, fontsize=7 if n <= 30 else 4)
    if n <= 25:  # counts are legible only on small matrices
        for i in range(n):
            for j in range(n):
                if index.cooccurrence[i, j]:
                    ax.text(j, i, str(index.cooccurrence[i, j]), ha="center", va="center", fontsize=5, color="w")
    ax.set_title(f"class co-occurrence, {len(index.ids)} images ({index.source.get('split', '')})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="log(1 + images with both)")
    fig.tight_layout()
    save_figure(fig, path)


# -- the command ----------------------------------------------------------------------------
def scan_class_sets(reader: Reader, workers: int = 1, check_images: bool = True, progress: bool = True):
    """Yield ``(H, W, class ids)`` per image in ``reader.ids()`` order, decoding labels in
    ``workers`` processes. Only the small per-image results cross process boundaries."""
    ids = reader.ids()
    bar = tqdm(total=len(ids), unit="img", desc="reading labels", disable=not progress, smoothing=0.1)
    try:
        if workers == 1:
            for image_id in ids:
                yield image_class_ids(reader, image_id, check_images)
                bar.update()
        else:
            ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
            chunk = max(1, min(64, len(ids) // (workers * 8) or 1))
            with ctx.Pool(workers, initializer=_init_worker, initargs=(reader, check_images)) as pool:
                for result in pool.imap(_worker_step, ids, chunksize=chunk):
                    yield result
                    bar.update()
    finally:
        bar.close()


def build_clusters(config: ClusterConfig, progress: bool = True) -> ClusterIndex:
    reader = open_reader(config.dataset, config.root, config.split, **config.reader_options)
    make_dir(config.out)  # an unusable --out fails now, not after the scan
    ids = reader.ids()
    object_ids = reader.classes.object_ids
    column = np.full(256, -1, dtype=np.int64)
    column[object_ids] = np.arange(len(object_ids))

    n, k = len(ids), len(object_ids)
    sizes = np.zeros((n, 2), dtype=np.int32)
    presence = np.zeros((n, k), dtype=bool)
    for row, (h, w, present) in enumerate(scan_class_sets(reader, config.workers, config.check_images, progress)):
        sizes[row] = (h, w)
        presence[row, column[present]] = True

    index = ClusterIndex(
        classes=reader.classes, ids=np.asarray(ids, dtype=str), sizes=sizes, presence=presence,
        cooccurrence=cooccurrence_from_presence(presence),
        class_counts=presence.sum(axis=0).astype(np.int64),
        source=dict(reader.description),
    )
    index.save(config.out)
    return index
