"""``blendgen mix``: the offline blended dataset (BMVC 3.1 C_fb and the Table 5a ablations).

Reads what ``build-clusters`` wrote to ``OUT`` (the clusters and the source dataset's
description), makes the plan (:mod:`blendgen.plan`), blends every planned pair
(:mod:`blendgen.blend`) and writes ``OUT/mixed``: HDF5 shards and ``manifest.json``
(:mod:`blendgen.shards`), with parts, workers and resume from :mod:`blendgen.runner`.

Each sample holds the blended image, the dominant label G_a, the phantom label G_b at the
dominant's size, δ, both source ids, both class sets and the cluster pair (k, j). The strategy,
δ spec, seed, plan fingerprint and shard size are recorded in every shard and the manifest:
they alone determine the output, so a rerun with other values refuses to mix into it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .blend import blend_pair
from .clusters import ClusterIndex
from .datasets.base import Reader
from .datasets.classes import ClassSet
from .datasets.files import DatasetError
from .datasets.registry import open_reader
from .plan import STRATEGIES, DeltaSpec, Plan, make_plan, parse_delta, row_key
from .shards.runner import RunResult, WriteOptions, merge_parts, write_shards
from .shards.schema import Sample, ShardHeader, encode_sample

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
    max_samples: int | None = None  # a seeded subsample of the plan (blendgen.plan.subsample_rows)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if isinstance(self.delta, str):
            object.__setattr__(self, "delta", parse_delta(self.delta))
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")
        if self.pairs is not None and self.pairs < 1:
            raise ValueError(f"pairs: must be >= 1, got {self.pairs}")
        if self.pairs is not None and self.strategy not in ("random", "random-fixed", "half"):
            raise ValueError(f"pairs: only the random, random-fixed and half strategies take a pair count, not {self.strategy}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples: must be >= 1, got {self.max_samples}")

    @property
    def directory(self) -> Path:
        return Path(self.dest) if self.dest is not None else Path(self.out) / MIXED_DIR


def reopen_source(source: dict, split: str | None = None) -> Reader:
    """The reader ``build-clusters`` used, from its recorded description (optionally for
    another split of the same dataset)."""
    try:
        kind, root = source["kind"], source["root"]
    except KeyError as exc:
        raise DatasetError(f"dataset.json: source description lacks {exc}") from None
    return open_reader(kind, root, split or source.get("split", "train"), **source.get("options", {}))


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


def mix(config: MixConfig, progress: bool = True) -> tuple[RunResult, Plan]:
    """Plan, blend and write this part's shards; merge the manifest when every part is done."""
    index = ClusterIndex.load(config.out)
    plan = plan_for(index, config)
    if len(plan) == 0:
        raise ValueError(f"strategy {config.strategy}: the plan is empty (skipped: {plan.skipped})")
    reader = reopen_source(index.source)
    source = MixSource(index, plan, reader, mix_header(index, config, plan))
    result = write_shards(source, config.directory, config.write, cooccurrence=index.cooccurrence,
                          extra={"plan": plan.summary()}, progress=progress, desc=f"mixing {config.strategy}")
    return result, plan


def merge(config: MixConfig) -> dict:
    return merge_parts(config.directory)
