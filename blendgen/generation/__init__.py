"""The top of ``blendgen``: what it makes from a dataset, step by step.

``clusters`` (``build-clusters``: class sets, co-occurrence, clusters) -> ``plan`` (pairing
strategies: which images to blend, with which δ) -> ``blend`` (pixels) -> ``sources`` (the samples
``mix`` and ``pack`` write, their configs and shard headers) -> the commands ``mix`` and ``pack``;
``saliency`` is the saliency task's ``mix`` and ``pack`` over the same sources. It reads datasets
(:mod:`blendgen.datasets`) and writes shards (:mod:`blendgen.shards`); nothing below imports it.
"""
