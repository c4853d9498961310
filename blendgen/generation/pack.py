"""``blendgen pack``: a split's standard (unblended) images in the shard format.

Stage 2 (denoising) trains on ``OUT/train`` and evaluation reads ``OUT/val``
(DESIGN: the shard directory is the trainer's only input). Samples are ``kind="standard"``:
no phantom, δ = 1, plus what the papers' evaluation subsets need from the source annotation
(IJCV Table 4, BMVC Table 2): the object class set, the instance count and the per-object
VOC ``occluded`` flags. Source JPEGs are stored byte for byte, not re-encoded. The dataset is the one ``build-clusters`` read (``OUT/dataset.json``),
with the requested split; the manifest carries the training co-occurrence matrix (out-of-context
subsets, IJCV Table 5). Shards, parts, workers and resume work as for ``mix``
(:mod:`blendgen.shards.runner`).
"""

from __future__ import annotations

from ..datasets.files import DatasetError
from ..datasets.registry import reopen_source
from ..shards.runner import RunResult, merge_parts, write_shards
from .clusters import ClusterIndex
from .sources import PackConfig, PackSource, pack_header


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
