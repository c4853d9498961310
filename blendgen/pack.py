"""``blendgen pack``: a split's standard (unblended) images in the shard format.

Stage 2 (denoising) trains on ``OUT/train`` and evaluation reads ``OUT/val``
(DESIGN: the shard directory is the trainer's only input). Samples are ``kind="standard"``:
no phantom, δ = 1, plus what the papers' evaluation subsets need from the source annotation
(IJCV Table 4, BMVC Table 2): the object class set, the instance count and the per-object
VOC ``occluded`` flags. Source JPEGs are stored byte for byte, not re-encoded. The dataset is the one ``build-clusters`` read (``OUT/dataset.json``),
with the requested split; the manifest carries the training co-occurrence matrix (out-of-context
subsets, IJCV Table 5). Shards, parts, workers and resume work as for ``mix``
(:mod:`blendgen.runner`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .clusters import ClusterIndex
from .datasets.base import Reader
from .datasets.files import DatasetError
from .mix import label_classes, reopen_source
from .shards.runner import RunResult, WriteOptions, merge_parts, write_shards
from .shards.schema import Sample, ShardError, ShardHeader, decode_image, encode_sample


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


def pack(config: PackConfig, progress: bool = True) -> RunResult:
    index = ClusterIndex.load(config.out)
    reader = reopen_source(index.source, config.split)
    if reader.classes != index.classes:
        raise DatasetError(f"{config.out}/dataset.json: split {config.split} has another class set than the clusters")
    source = PackSource(reader, pack_header(index, reader, config))
    return write_shards(source, config.directory, config.write, cooccurrence=index.cooccurrence,
                        extra={"plan": {"rows": len(source)}}, progress=progress, desc=f"packing {config.split}")


def merge(config: PackConfig) -> dict:
    return merge_parts(config.directory)
