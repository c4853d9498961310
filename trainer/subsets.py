"""The subsets of the papers' complex-scene and out-of-context suites (IJCV Tables 4 and 5, Fig. 5),
as lists of sample keys.

Subset membership is a pure function of the val samples' metadata (:class:`ImageInfo`: object
classes, instance count, VOC ``occluded`` flags) and of the training co-occurrence matrix, tested
on hand-made samples; :mod:`trainer.suites` scores a checkpoint on them. The choices behind each
subset are in that module's docstring and in docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from blendgen.datasets.classes import VOC, ClassSet
from blendgen.shards.directory import ShardDir


# -- what the subsets are made of ----------------------------------------------------------------
@dataclass(frozen=True)
class ImageInfo:
    """A val image as the subsets see it (``blendgen pack`` stores these with every sample)."""

    key: str
    classes: frozenset[int]  # object class ids (label values) in the label map
    instances: int = -1  # annotated object instances; -1 = unknown
    occluded: tuple[bool, ...] = ()  # per-object VOC flags; () = unknown


def read_image_infos(shards: ShardDir) -> list[ImageInfo]:
    """Every sample's metadata, in stored order (reads no pixels)."""
    infos = []
    for reader in shards.readers():
        for i in range(len(reader)):
            r = reader.read_raw(i)
            key = r["key"].decode() if isinstance(r["key"], bytes) else str(r["key"])
            infos.append(ImageInfo(key=key, classes=frozenset(int(c) for c in r["dominant_classes"]),
                                   instances=int(r["instances"]), occluded=tuple(bool(o) for o in r["occluded"])))
        reader.close()
    return infos


# -- complex scenes (IJCV Table 4) ----------------------------------------------------------------
def complex_subsets(infos: Sequence[ImageInfo]) -> dict[str, list[str]]:
    """Table 4's subsets as lists of keys: at least one / every object occluded (VOC XML flags),
    exactly n annotated instances (n = 1-4), exactly n object classes (n = 2-4)."""
    subsets = {
        "1-Occ": [i.key for i in infos if any(i.occluded)],
        "All-Occ": [i.key for i in infos if i.occluded and all(i.occluded)],
    }
    subsets |= {f"{n}-Obj": [i.key for i in infos if i.instances == n] for n in (1, 2, 3, 4)}
    subsets |= {f"{n}-Cls": [i.key for i in infos if len(i.classes) == n] for n in (2, 3, 4)}
    return subsets


def unknown_annotations(infos: Sequence[ImageInfo]) -> dict[str, int]:
    """Images the occlusion / instance subsets cannot judge (no XML: COCO, image folders)."""
    return {"occlusion": sum(not i.occluded for i in infos), "instances": sum(i.instances < 0 for i in infos)}


# -- out of context (IJCV Table 5, Fig. 5) -----------------------------------------------------------
def training_cooccurrence(root: Path, val: ShardDir) -> np.ndarray:
    """The training co-occurrence matrix (IJCV Algorithm 1): the one ``blendgen pack`` copied into
    the val manifest, else ``ROOT/clusters.npz``; (N, N) over ``classes.object_ids``."""
    C = val.cooccurrence
    if C is None and (root / "clusters.npz").is_file():
        from blendgen.generation.clusters import ClusterIndex

        C = ClusterIndex.load(root).cooccurrence
    if C is None:
        raise ValueError(f"context suite: no training co-occurrence matrix in {val.path}/manifest.json "
                         f"or {root}/clusters.npz (run `blendgen build-clusters` and `blendgen pack`)")
    n = len(val.classes.object_ids)
    if C.shape != (n, n):
        raise ValueError(f"context suite: the co-occurrence matrix is {C.shape}, the classes have {n} object classes")
    return np.asarray(C, dtype=np.int64)


def person_id(classes: ClassSet, person: str) -> int:
    """The label id of Table 5's anchor class, or a clear error for a dataset without it."""
    if person not in classes.names:
        raise ValueError(f"context suite: the classes have no {person!r} class (they are "
                         f"{', '.join(classes.names)}); name Table 5's anchor class with --person")
    pid = classes.names.index(person)
    if pid not in classes.object_ids:
        raise ValueError(f"context suite: {person!r} is a background class, not an object class")
    return pid


PAPER_PARTNERS = ("horse", "motorbike", "bicycle", "bottle", "car")  # IJCV Table 5's classes, on VOC


def table5_partners(C: np.ndarray, classes: ClassSet, pid: int, partners: tuple[str, ...] | None,
                    k: int) -> list[int]:
    """Label ids of Table 5's classes: the ones named; by default the paper's five where the
    class set is VOC's, the ``k`` most co-occurring with ``pid`` elsewhere (or when asked:
    ``("derived",)``)."""
    if partners == ("derived",) or (partners is None and list(classes.names) != list(VOC.names)):
        return person_partners(C, classes, pid, k)
    names = partners or PAPER_PARTNERS
    unknown = [n for n in names if n not in classes.names]
    if unknown:
        raise ValueError(f"context suite: no class named {', '.join(map(repr, unknown))} in "
                         f"{', '.join(classes.names)} (--partners)")
    ids = [classes.names.index(n) for n in names]
    if pid in ids or any(i not in classes.object_ids for i in ids):
        raise ValueError(f"context suite: --partners must be object classes other than {classes.names[pid]!r}")
    return ids


def person_partners(C: np.ndarray, classes: ClassSet, pid: int, k: int) -> list[int]:
    """Label ids of the ``k`` classes that co-occur most with ``pid`` in training (Table 5:
    horse, motorbike, bicycle, bottle, car on VOC), most first, ties by id; never-seen pairs
    are left out, so fewer than k may come back."""
    ids = classes.object_ids
    row = C[list(ids).index(pid)]
    order = sorted((j for j in range(len(ids)) if ids[j] != pid and row[j] > 0), key=lambda j: (-row[j], ids[j]))
    return [int(ids[j]) for j in order[:k]]


def context_subsets(infos: Sequence[ImageInfo], pid: int, partners: Sequence[int],
                    names: Sequence[str]) -> dict[str, list[str]]:
    """Table 5: for each partner c, "c & person" = images holding both classes (others allowed),
    "c alone" = images whose only object class is c ("Exclusive")."""
    subsets = {}
    for c in partners:
        subsets[f"{names[c]} & {names[pid]}"] = [i.key for i in infos if {c, pid} <= i.classes]
        subsets[f"{names[c]} alone"] = [i.key for i in infos if i.classes == {c}]
    return subsets


def max_pair_count(classes: frozenset[int], C: np.ndarray, row: dict[int, int]) -> int | None:
    """The largest training co-occurrence among the image's class pairs; None without a pair."""
    counts = [int(C[row[a], row[b]]) for a, b in combinations(sorted(classes), 2)]
    return max(counts) if counts else None


def rarity_subsets(infos: Sequence[ImageInfo], C: np.ndarray, object_ids: Sequence[int],
                   thresholds: Sequence[int]) -> dict[str, list[str]]:
    """Fig. 5: "any" = images with at least two object classes; "<t" = those whose every class
    pair co-occurred fewer than t times in training (e.g. cat & bottle, 18 times on VOC, are in
    <50 ... <20 but not <10)."""
    row = {int(c): r for r, c in enumerate(object_ids)}
    worst = {i.key: max_pair_count(i.classes, C, row) for i in infos}
    subsets = {"any": [k for k, m in worst.items() if m is not None]}
    subsets |= {f"<{t}": [k for k, m in worst.items() if m is not None and m < t] for t in thresholds}
    return subsets
