"""``blendgen mix``: the offline blended dataset (BMVC 3.1 C_fb and the Table 5a ablations).

Reads what ``build-clusters`` wrote to ``OUT`` (the clusters and the source dataset's
description), makes the plan (:mod:`blendgen.generation.plan`), blends every planned pair
(:mod:`blendgen.generation.blend`, :class:`~blendgen.generation.sources.MixSource`) and writes
``OUT/mixed``: HDF5 shards and ``manifest.json`` (:mod:`blendgen.shards`), with parts, workers and
resume from :mod:`blendgen.shards.runner`.

Each sample holds the blended image, the dominant label G_a, the phantom label G_b at the
dominant's size, δ, both source ids, both class sets and the cluster pair (k, j). The strategy,
δ spec, seed, plan fingerprint and shard size are recorded in every shard and the manifest:
they alone determine the output, so a rerun with other values refuses to mix into it.
"""

from __future__ import annotations

from ..datasets.registry import reopen_source
from ..shards.runner import RunResult, merge_parts, write_shards
from .clusters import ClusterIndex
from .plan import Plan
from .sources import MixConfig, MixSource, mix_header, plan_for


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
