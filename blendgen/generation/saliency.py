"""Salient object detection shards (IJCV Sect. 4.5, Table 7): the saliency task's ``pack`` and
``mix``, over a saliency dataset read with its pseudo labels (:mod:`blendgen.datasets.saliency`).

    blendgen pseudo-label --checkpoint runs/voc/stage2.pt --images data/DUTS-TR/DUTS-TR-Image --out pseudo/duts-tr
    blendgen build-clusters --dataset saliency --root data/DUTS-TR --option pseudo_labels=pseudo/duts-tr --out out-sod/
    blendgen pack --task saliency --out out-sod/ --split train                   # DUTS-TR -> out-sod/train
    blendgen pack --task saliency --out out-sod/ --split val --root data/ECSSD   # ECSSD   -> out-sod/val
    blendgen mix --task saliency --out out-sod/                                  # SourceSep-CC -> out-sod/mixed

``pack --task saliency`` writes standard shards whose ``label`` is the mask and whose ``dominant_classes``
is the image's pseudo-label class set; the manifest says ``"task": "saliency"`` and carries the
pseudo labels' co-occurrence matrix with their class set under ``"pairing"``. SourceSep-CM then
pairs a batch by those class sets (``trainer.methods``), and every method trains and is scored on
the masks. ``mix --task saliency`` is ``blendgen mix`` with masks as the label maps (C_fb over the
pseudo-label clusters), for SourceSep-CC.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..datasets.files import DatasetError
from ..datasets.registry import reopen_source
from ..datasets.saliency import SALIENCY, SaliencyReader
from ..io import make_dir
from ..shards.runner import RunResult, write_shards
from ..shards.schema import Sample, ShardHeader
from .clusters import ClusterIndex
from .sources import MixConfig, MixSource, PackConfig, PackSource, mix_header, plan_for

TASK = "saliency"  # the manifest's "task"; trainer.saliency.TASK reads it


# -- shards ---------------------------------------------------------------------------------------
def pairing_manifest(index: ClusterIndex) -> dict:
    """What the trainer pairs saliency samples by: the pseudo labels' class set and matrix order."""
    # Names and ids only (no palette): the trainer needs the matrix order, people the names. The
    # top-level object_ids describe the rows of the manifest's co-occurrence matrix (docs/format.md),
    # so they are the pseudo labels' too, not the mask's one object class.
    return {"task": TASK, "object_ids": index.classes.object_ids.tolist(),
            "pairing": {"class_names": list(index.classes.names),
                                      "background": list(index.classes.background),
                                      "object_ids": index.classes.object_ids.tolist(),
                                      "source": "image-level pseudo-label class sets (build-clusters)"}}


def class_sets(index: ClusterIndex) -> dict[str, tuple[int, ...]]:
    """Image id -> its pseudo-label object class ids, as build-clusters found them."""
    object_ids = index.classes.object_ids
    return {str(i): tuple(int(c) for c in object_ids[row]) for i, row in zip(index.ids, index.presence)}


class SaliencyPackSource(PackSource):
    """Standard samples whose label is the mask and whose class set is the pseudo-label one."""

    def __init__(self, reader: SaliencyReader, header: ShardHeader, classes_of: dict[str, tuple[int, ...]]):
        super().__init__(reader, header)
        self.classes_of = classes_of

    def samples(self, start: int, stop: int) -> Iterator[Sample]:
        for image_id in self.ids[start:stop]:
            try:
                image, mask = self.reader.read_target_pair(image_id)
            except OSError as exc:
                raise DatasetError(f"{self.reader.image_path(image_id)}: cannot read ({exc})") from None
            yield Sample(key=image_id, image=image, label=mask, phantom_label=None, delta=1.0, dominant_id=image_id,
                         dominant_classes=self.classes_of.get(image_id, ()))


@dataclass(frozen=True)
class SaliencyPackConfig(PackConfig):
    """``pack --task saliency``: ``out`` is the build-clusters output over the training
    saliency set (with pseudo labels)."""

    root: Path | None = None  # another saliency dataset as this split (ECSSD as val); None = the clustered one
    layout: str | None = None  # of ``root``; None = detected


def _saliency_source(index: ClusterIndex, out: Path) -> SaliencyReader:
    if index.source.get("kind") != "saliency":
        raise DatasetError(f"{out}/dataset.json: built from a {index.source.get('kind')} dataset; saliency shards "
                           f"need `blendgen build-clusters --dataset saliency`")
    return reopen_source(index.source)


def saliency_pack(config: SaliencyPackConfig, progress: bool = True) -> RunResult:
    """Write a saliency split as standard shards (mask as label, pseudo-label class sets)."""
    index = ClusterIndex.load(config.out)
    trained = _saliency_source(index, config.out)
    if config.root is None:
        clustered = index.source.get("split", "train")
        if config.split != clustered:  # the same folder again would score the training images
            raise ValueError(f"split {config.split}: {config.out} clusters split {clustered} of "
                             f"{index.source.get('root')}; give the {config.split} set's own --root")
        reader = trained
    else:
        options = {} if config.layout is None else {"layout": config.layout}
        reader = SaliencyReader(config.root, config.split, **options)
    make_dir(config.directory)
    ids_digest = hashlib.sha256("\n".join(reader.ids()).encode()).hexdigest()
    generation = {"command": "saliency-pack", "shard_size": config.write.shard_size, "ids_sha256": ids_digest,
                  "clusters": str(Path(config.out).resolve()), "task": TASK,
                  "image_bytes": "source JPEG verbatim; other formats encoded with image_codec/quality"}
    header = ShardHeader(kind="standard", classes=SALIENCY, split=config.split,
                         source=json.loads(json.dumps(reader.description)), generation=generation,
                         image_codec="jpeg", image_quality=config.write.image_quality,
                         image_chroma=config.write.image_chroma)
    # The clustered set's own images pair by their pseudo labels; another set (the val one) is
    # only scored, so it needs none.
    classes_of = class_sets(index) if config.root is None else {}
    source = SaliencyPackSource(reader, header, classes_of)
    return write_shards(source, config.directory, config.write, cooccurrence=index.cooccurrence,
                        extra={**pairing_manifest(index), "plan": {"rows": len(source)}}, progress=progress,
                        desc=f"packing saliency {config.split}")


class SaliencyMixSource(MixSource):
    """``blendgen mix``'s planned blends with the masks as the label maps; both class sets stay the
    images' pseudo-label ones (a mask has no classes to recount after resizing)."""

    def __init__(self, index: ClusterIndex, plan, reader: SaliencyReader, header: ShardHeader):
        super().__init__(index, plan, reader, header)
        self.row_of = {image_id: row for row, image_id in enumerate(self.ids)}

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self.reader.read_target_pair(self.ids[i])
        except OSError as exc:
            raise DatasetError(f"{self.reader.image_path(self.ids[i])}: cannot read ({exc})") from None

    def samples(self, start: int, stop: int) -> Iterator[Sample]:
        for sample in super().samples(start, stop):
            if sample.phantom_id:
                sample.phantom_classes = self.classes[self.row_of[sample.phantom_id]]
            yield sample


def saliency_mix(config: MixConfig, progress: bool = True):
    """SourceSep-CC's offline blends of a saliency set: the plan of ``blendgen mix`` over the
    pseudo-label clusters, masks as G_a and G_b. Returns (RunResult, Plan)."""
    index = ClusterIndex.load(config.out)
    reader = _saliency_source(index, config.out)
    plan = plan_for(index, config)
    if len(plan) == 0:
        raise ValueError(f"strategy {config.strategy}: the plan is empty (skipped: {plan.skipped})")
    base = mix_header(index, config, plan)
    header = dataclasses.replace(base, classes=SALIENCY, generation={**base.generation, "task": TASK})
    source = SaliencyMixSource(index, plan, reader, header)
    result = write_shards(source, config.directory, config.write, cooccurrence=index.cooccurrence,
                          extra={**pairing_manifest(index), "plan": plan.summary()}, progress=progress,
                          desc=f"mixing saliency {config.strategy}")
    return result, plan
