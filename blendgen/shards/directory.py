"""A shard directory as the trainer opens it: the manifest, its shards' headers checked against
it, and readers of every shard."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets.classes import ClassSet
from .manifest import check_against_manifest, load_manifest
from .reader import ShardReader
from .verify import first_problem, verify_directory


@dataclass
class ShardDir:
    """A directory of shards described by its ``manifest.json``."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> "ShardDir":
        """Open a shard directory: its manifest well-formed, every listed shard a plain file of
        this directory whose header (format, kind, split, classes, codec, sample count) agrees
        with the manifest. Cheap (one header per shard); :mod:`blendgen.shards.verify` reads the bytes."""
        path = Path(path)
        manifest = load_manifest(path)
        for entry in manifest["shards"]:
            check_against_manifest(path / entry["name"], entry, manifest)
        return cls(path=path, manifest=manifest)

    @property
    def classes(self) -> ClassSet:
        return ClassSet.from_json(self.manifest["classes"])

    @property
    def cooccurrence(self) -> np.ndarray | None:
        c = self.manifest.get("cooccurrence")
        return None if c is None else np.asarray(c, dtype=np.int64)

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path / e["name"] for e in self.manifest["shards"]]

    @property
    def num_samples(self) -> int:
        return sum(e["samples"] for e in self.manifest["shards"])

    def readers(self) -> list[ShardReader]:
        return [ShardReader(p) for p in self.shard_paths]

    def verify(self, workers: int = 1) -> None:
        """Every byte against the manifest and the per-sample checksums (what ``blendgen
        verify`` does); ShardError with the first problem found."""
        problem = first_problem(verify_directory(self.path, workers, progress=False))
        if problem is not None:
            raise problem

