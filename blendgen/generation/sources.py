"""What ``mix`` and ``pack`` write, as sample sources (:class:`blendgen.shards.runner.SampleSource`):
a plan's blends and a split's standard images, with the configs and shard headers they are written
under.

The commands open their inputs and hand a source to the runner: :mod:`blendgen.generation.mix` and
:mod:`blendgen.generation.pack` for segmentation, :mod:`blendgen.generation.saliency` for the
saliency task, which subclasses these sources (masks as the label maps) instead of calling the
segmentation commands.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..datasets.base import Reader
from ..datasets.classes import ClassSet
from ..datasets.files import DatasetError
from ..shards.runner import WriteOptions
from ..shards.schema import Sample, ShardError, ShardHeader, decode_image, encode_sample
from .blend import blend_pair
from .clusters import ClusterIndex
from .plan import PAIRED, STRATEGIES, DeltaSpec, Plan, make_plan, parse_delta, row_key


# -- mix: a plan's blends -----------------------------------------------------------------------
MIXED_DIR = "mixed"


@dataclass(frozen=True)
class MixConfig:
    out: Path  # build-clusters output; the shards go to out/mixed unless ``dest`` is given
    strategy: str = "clustered"
    delta: DeltaSpec | str | None = None  # None: the strategy's paper value
    seed: int = 0
    pairs: int | None = None  # random, random-fixed, half: pairs per image (None: paper value)
    write: WriteOptions = WriteOptions()
    dest: Path | None = None
    max_samples: int | None = None  # a seeded subsample of the plan (blendgen.generation.plan.subsample_rows)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if isinstance(self.delta, str):
            object.__setattr__(self, "delta", parse_delta(self.delta))
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")
        if self.pairs is not None and self.pairs < 1:
            raise ValueError(f"pairs: must be >= 1, got {self.pairs}")
        if self.pairs is not None and self.strategy not in PAIRED:
            raise ValueError(f"pairs: only the {', '.join(PAIRED[:-1])} and {PAIRED[-1]} strategies take a pair count, "
                             f"not {self.strategy}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples: must be >= 1, got {self.max_samples}")

    @property
    def directory(self) -> Path:
        return Path(self.dest) if self.dest is not None else Path(self.out) / MIXED_DIR


class MixSource:
    """The planned samples: reads, resizes and blends on demand. Holds paths and arrays only,
    so it pickles into worker processes."""

    def __init__(self, index: ClusterIndex, plan: Plan, reader: Reader, header: ShardHeader):
        self.ids = [str(i) for i in index.ids]
        self.plan = plan
        self.reader = reader
        self.header = header
        object_ids = index.classes.object_ids
        # Class sets of every image, as label ids (presence columns are matrix indices).
        self.classes = [tuple(int(c) for c in object_ids[row]) for row in index.presence]
        self.class_set = index.classes

    def __len__(self) -> int:
        return len(self.plan.rows)

    def keys(self, start: int, stop: int) -> list[str]:
        return [row_key(row, self.ids) for row in self.plan.rows[start:stop]]

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self.reader.read_pair(self.ids[i])
        except OSError as exc:  # the reader turns bad files into DatasetError; this is the disk
            raise DatasetError(f"{self.reader.image_path(self.ids[i])}: cannot read ({exc})") from None

    def records(self, start: int, stop: int) -> Iterator[dict]:
        for sample in self.samples(start, stop):
            yield encode_sample(sample, self.header)

    def samples(self, start: int, stop: int) -> Iterator[Sample]:
        dominant_index, dominant = -1, None
        for row in self.plan.rows[start:stop]:
            a, b = int(row["dominant"]), int(row["phantom"])
            if a != dominant_index:  # rows come in runs sharing a dominant: decode it once
                dominant_index, dominant = a, self.read(a)
            key = row_key(row, self.ids)
            if b < 0:  # standard image (strategy "half")
                yield Sample(key=key, image=dominant[0], label=dominant[1], phantom_label=None, delta=1.0,
                             dominant_id=self.ids[a], dominant_classes=self.classes[a])
                continue
            phantom = self.read(b)
            image, label, phantom_label = blend_pair(dominant, phantom, row["delta"])
            resized = phantom_label.shape != phantom[1].shape
            yield Sample(
                key=key, image=image, label=label, phantom_label=phantom_label, delta=float(row["delta"]),
                dominant_id=self.ids[a], phantom_id=self.ids[b],
                dominant_classes=self.classes[a],
                # Nearest-neighbour shrinking can drop a sliver class: describe the stored map.
                phantom_classes=label_classes(phantom_label, self.class_set) if resized else self.classes[b],
                pair=(int(row["k"]), int(row["j"])),
            )


def label_classes(label: np.ndarray, classes: ClassSet) -> tuple[int, ...]:
    """Object class ids present in a (H, W) uint8 label map (background and ignore left out)."""
    hist = cv2.calcHist([label], [0], None, [256], [0, 256]).ravel()  # 3x faster than np.bincount
    present = np.flatnonzero(hist[: classes.num_classes])
    return tuple(int(c) for c in present if c not in classes.background)


def mix_header(index: ClusterIndex, config: MixConfig, plan: Plan) -> ShardHeader:
    generation = {
        "command": "mix",
        "strategy": plan.strategy,
        "delta": str(plan.delta),
        "delta_range": [plan.delta.lo, plan.delta.hi],
        "seed": plan.seed,
        "pairs_per_image": plan.pairs,
        "shard_size": config.write.shard_size,
        "plan_rows": len(plan),
        "plan_sha256": plan.fingerprint(index.ids),
    }
    if plan.max_samples is not None:  # recorded only when asked for: whole-plan shards stay as they were
        generation.update(max_samples=plan.max_samples, planned_rows=plan.planned)
    return ShardHeader(kind="mixed", classes=index.classes, split=index.source.get("split", "train"),
                       source=index.source, generation=json.loads(json.dumps(generation)),
                       image_codec="jpeg", image_quality=config.write.image_quality,
                       image_chroma=config.write.image_chroma)


def plan_for(index: ClusterIndex, config: MixConfig) -> Plan:
    return make_plan(index.presence, config.strategy, config.delta, config.seed, config.pairs, config.max_samples)


# -- pack: a split's standard images ----------------------------------------------------------
@dataclass(frozen=True)
class PackConfig:
    out: Path  # build-clusters output; the shards go to out/<split> unless ``dest`` is given
    split: str = "train"
    write: WriteOptions = WriteOptions()
    dest: Path | None = None

    def __post_init__(self):
        if not self.split or "/" in self.split or self.split.startswith("."):
            raise ValueError(f"split: expected a split name such as train or val, got {self.split!r}")

    @property
    def directory(self) -> Path:
        return Path(self.dest) if self.dest is not None else Path(self.out) / self.split


class PackSource:
    """The split's images in reader order, one standard sample each."""

    def __init__(self, reader: Reader, header: ShardHeader):
        self.reader = reader
        self.ids = reader.ids()
        self.header = header

    def __len__(self) -> int:
        return len(self.ids)

    def keys(self, start: int, stop: int) -> list[str]:
        return list(self.ids[start:stop])

    def records(self, start: int, stop: int) -> Iterator[dict]:
        for sample in self.samples(start, stop):
            yield encode_sample(sample, self.header, image_bytes=self.source_jpeg(sample))

    def source_jpeg(self, sample: Sample) -> np.ndarray | None:
        """The source file's bytes when it is a JPEG that decodes to exactly the reader's image
        (ours: standard images are stored verbatim, so evaluation sees the dataset's own pixels
        and nothing is compressed twice); None otherwise, and the image is encoded."""
        data = np.fromfile(self.reader.image_path(sample.dominant_id), dtype=np.uint8)
        if data[:3].tobytes() != b"\xff\xd8\xff":
            return None
        try:
            same = np.array_equal(decode_image(data), sample.image)
        except ShardError:
            return None
        return data if same else None

    def samples(self, start: int, stop: int) -> Iterator[Sample]:
        for image_id in self.ids[start:stop]:
            try:
                image, label = self.reader.read_pair(image_id)
                objects = self.reader.objects(image_id)
            except OSError as exc:
                raise DatasetError(f"{self.reader.image_path(image_id)}: cannot read ({exc})") from None
            yield Sample(
                key=image_id, image=image, label=label, phantom_label=None, delta=1.0, dominant_id=image_id,
                dominant_classes=label_classes(label, self.reader.classes),
                instances=-1 if objects is None else len(objects),
                occluded=() if objects is None else tuple(o.occluded for o in objects),
            )


def pack_header(index: ClusterIndex, reader: Reader, config: PackConfig) -> ShardHeader:
    ids_digest = hashlib.sha256("\n".join(reader.ids()).encode()).hexdigest()
    generation = {"command": "pack", "shard_size": config.write.shard_size, "ids_sha256": ids_digest,
                  "image_bytes": "source JPEG verbatim; other formats encoded with image_codec/quality"}
    return ShardHeader(kind="standard", classes=index.classes, split=config.split,
                       source=json.loads(json.dumps(reader.description)), generation=generation,
                       image_codec="jpeg", image_quality=config.write.image_quality,
                       image_chroma=config.write.image_chroma)
