"""Pairing strategies: which images ``blendgen mix`` blends, with which weight. Pure functions.

A *plan* is a table with one row per output sample (:data:`PLAN_DTYPE`):

``dominant``  row index (into ``ClusterIndex.ids``) of the dominant image I_a
``phantom``   row index of the phantom image I_b, or -1 for a standard (unblended) sample
``delta``     weight of the dominant, ``I = δ·I_a + (1−δ)·I_b`` (BMVC Eq. 1); 1 when standard
``k``, ``j``  (dominant cluster, phantom cluster) as co-occurrence matrix indices, -1 if none
``rep``       repetition number for strategies that pair one image several times, else 0

Strategies (BMVC Table 5a; ``clustered`` is the method, the others its ablations):

``clustered`` (C_fb, BMVC 3.1)  for every cluster k, every image a of k and every other
    cluster j != k: one random phantom from cluster j. Each image of cluster k yields N−1
    samples, so every category is blended with every other.
``random`` (R_fb)  each image paired with ``pairs`` (10 in the paper) random images of any class.
``within`` (Ca_fb)  each image of cluster k paired with a random other image of cluster k.
``random-fixed`` (WR_fb)  as ``random`` with a fixed δ (0.6 in the paper).
``half`` (M_fb)  random pairs within one random half of the training set, the other half kept
    as standard images (δ = 1, no phantom).

Randomness is explicit: every group of rows draws from its own generator seeded with
``(seed, strategy, group)``, so a plan depends on nothing but its inputs and any row can be
recomputed alone. Rows are emitted in groups sharing a dominant image (a decode of the
dominant serves the whole group) and the groups are put in one seeded random order, so any
contiguous block of rows, i.e. a shard, is a sample of all category pairs rather than one
cluster (ours: a streaming reader with a small shuffle buffer then still sees every pair).

``max_samples`` (ours) keeps a seeded uniform subsample of the rows, in plan order, for
datasets where C_fb is too large to write: when most images hold most classes every image
is in most clusters and the plan has about N(N-1) rows per image. Every (k, j) pair keeps
its share of the rows in expectation; pairs with very few rows may lose them all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

PLAN_DTYPE = np.dtype([
    ("dominant", "<i4"), ("phantom", "<i4"), ("delta", "<f4"),
    ("k", "<i2"), ("j", "<i2"), ("rep", "<i2"),
])

STRATEGIES = ("clustered", "random", "within", "random-fixed", "half")

# Paper values (BMVC 3.1 and Table 5a).
DEFAULT_DELTA = "0.7:1.0"  # "we sample δ uniformly from a range of [0.7 − 1]"
RANDOM_FIXED_DELTA = "0.6"  # WR_fb: "random pairing with fixed δ = 0.6"
RANDOM_PAIRS = 10  # R_fb: "each sample randomly paired with 10 samples"
HALF_PAIRS = 1  # (ours) M_fb gives no count; one pair per image of the blended half

# Second entry of every generator seed: keeps the strategies' random streams apart.
_STREAM = {name: i for i, name in enumerate(STRATEGIES)}
_ORDER_STREAM = 100  # the stream of the group order
_SUBSAMPLE_STREAM = 101  # the stream of --max-samples


# -- δ ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeltaSpec:
    """δ ~ Uniform[lo, hi], or fixed when lo == hi. The dominant gets δ, so δ ∈ [0.5, 1]."""

    lo: float
    hi: float

    def __post_init__(self):
        if not (0.5 <= self.lo <= 1.0 and 0.5 <= self.hi <= 1.0):
            raise ValueError(f"delta: {self} is outside [0.5, 1] (the dominant image must weigh at least half)")
        if self.lo > self.hi:
            raise ValueError(f"delta: lower bound {self.lo} is above upper bound {self.hi}")

    @property
    def fixed(self) -> bool:
        return self.lo == self.hi

    def draw(self, u: np.ndarray) -> np.ndarray:
        """Map uniform draws in [0, 1) to δ values, float32 (the precision blending uses)."""
        if self.fixed:
            return np.full(u.shape, self.lo, dtype=np.float32)
        return np.clip(self.lo + (self.hi - self.lo) * u, self.lo, self.hi).astype(np.float32)

    def __str__(self) -> str:
        return f"{self.lo:g}" if self.fixed else f"{self.lo:g}:{self.hi:g}"


def parse_delta(text: str) -> DeltaSpec:
    """``"lo:hi"`` (uniform) or ``"v"`` (fixed). ValueError with a readable message otherwise."""
    parts = str(text).strip().split(":")
    if len(parts) > 2:
        raise ValueError(f"delta: expected LO:HI or a single value, got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"delta: expected LO:HI or a single value, got {text!r}") from None
    if not all(np.isfinite(values)):
        raise ValueError(f"delta: expected finite numbers, got {text!r}")
    return DeltaSpec(values[0], values[-1])


def default_delta(strategy: str) -> DeltaSpec:
    return parse_delta(RANDOM_FIXED_DELTA if strategy == "random-fixed" else DEFAULT_DELTA)


def default_pairs(strategy: str) -> int | None:
    return {"random": RANDOM_PAIRS, "random-fixed": RANDOM_PAIRS, "half": HALF_PAIRS}.get(strategy)


# The strategies that pair each image a number of times (``pairs``); the others pair by clusters.
PAIRED = tuple(s for s in STRATEGIES if default_pairs(s) is not None)


# -- the plan -----------------------------------------------------------------------------------
@dataclass
class Plan:
    rows: np.ndarray  # (R,) PLAN_DTYPE
    strategy: str
    delta: DeltaSpec
    seed: int
    pairs: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> pairs not generated
    max_samples: int | None = None  # the subsample size asked for, None: the whole plan
    planned: int | None = None  # rows of the whole plan, before subsampling

    def __len__(self) -> int:
        return len(self.rows)

    def fingerprint(self, ids) -> str:
        """SHA-256 of the rows and the image ids they index: equal plans, equal fingerprints."""
        h = hashlib.sha256(np.ascontiguousarray(self.rows).tobytes())
        h.update("\n".join(str(i) for i in ids).encode())
        return h.hexdigest()

    def summary(self) -> dict:
        summary = {
            "rows": len(self.rows),
            "blended": int((self.rows["phantom"] >= 0).sum()),
            "standard": int((self.rows["phantom"] < 0).sum()),
            "skipped": dict(self.skipped),
        }
        if self.max_samples is not None:  # only then, so whole-plan manifests stay as they were
            summary.update(max_samples=self.max_samples, planned_rows=self.planned)
        return summary


def row_key(row, ids) -> str:
    """Stable, unique sample key: dominant image id plus what makes the row unique
    (``#k-j`` clustered/within pairs, ``#rN`` random pairs, ``#std`` standard samples)."""
    dominant = ids[int(row["dominant"])]
    if row["phantom"] < 0:
        return f"{dominant}#std"
    if row["k"] >= 0:
        return f"{dominant}#{int(row['k'])}-{int(row['j'])}"
    return f"{dominant}#r{int(row['rep'])}"


def make_plan(presence: np.ndarray, strategy: str = "clustered", delta: DeltaSpec | None = None,
              seed: int = 0, pairs: int | None = None, max_samples: int | None = None) -> Plan:
    """The plan of ``strategy`` over the images of ``presence`` ((n, N) bool, image x class),
    cut to a seeded subsample of ``max_samples`` rows when it is longer."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if seed < 0:
        raise ValueError(f"seed: must be >= 0, got {seed}")
    delta = default_delta(strategy) if delta is None else delta
    if strategy == "random-fixed" and not delta.fixed:
        raise ValueError(f"delta: random-fixed (WR_fb) blends with one fixed δ, got the range {delta}")
    pairs = default_pairs(strategy) if pairs is None else pairs
    if pairs is not None and pairs < 1:
        raise ValueError(f"pairs: must be >= 1, got {pairs}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples: must be >= 1, got {max_samples}")
    presence = np.asarray(presence, dtype=bool)
    stream = _STREAM[strategy]
    if strategy == "clustered":
        rows, skipped = clustered_rows(presence, delta, seed, stream)
    elif strategy == "within":
        rows, skipped = within_rows(presence, delta, seed, stream)
    elif strategy in ("random", "random-fixed"):
        rows, skipped = random_rows(np.arange(len(presence)), pairs, delta, seed, stream)
    else:
        rows, skipped = half_rows(len(presence), pairs, delta, seed, stream)
    rows = shuffle_groups(rows, seed)
    planned = len(rows)
    if max_samples is not None:
        rows = subsample_rows(rows, max_samples, seed)
    return Plan(rows=rows, strategy=strategy, delta=delta, seed=seed,
                pairs=pairs if strategy in PAIRED else None, skipped=skipped,
                max_samples=max_samples, planned=planned if max_samples is not None else None)


# -- strategies ---------------------------------------------------------------------------------
def _rows(n: int) -> np.ndarray:
    rows = np.zeros(n, dtype=PLAN_DTYPE)
    rows["k"] = rows["j"] = -1
    return rows


def pick_excluding(members: np.ndarray, exclude: int, u: float) -> int:
    """Member ``floor(u · m)`` of the sorted ``members`` with ``exclude`` taken out; -1 if none left."""
    pos = int(np.searchsorted(members, exclude))
    has = pos < len(members) and members[pos] == exclude
    available = len(members) - has
    if available == 0:
        return -1
    r = int(u * available)
    if has and r >= pos:
        r += 1
    return int(members[r])


def clustered_rows(presence: np.ndarray, delta: DeltaSpec, seed: int, stream: int):
    """C_fb (BMVC 3.1): rows for every (cluster k, image a in k, cluster j != k).

    (ours) The phantom is drawn from cluster j without a itself (it may still contain class
    k); when cluster j holds nothing but a, or nothing at all, the pair is skipped and counted.
    """
    n, num_clusters = presence.shape
    clusters = [np.flatnonzero(presence[:, k]) for k in range(num_clusters)]
    sizes = np.array([len(c) for c in clusters], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    members = np.concatenate(clusters) if n else np.zeros(0, np.int64)
    out = _rows(int(sizes.sum()) * max(num_clusters - 1, 0))
    skipped = {"phantom_cluster_only_dominant": 0, "phantom_cluster_empty": 0}
    filled = 0
    for k in range(num_clusters):
        others = np.array([j for j in range(num_clusters) if j != k], dtype=np.int64)
        for a in clusters[k]:
            rng = np.random.default_rng([seed, stream, k, int(a)])
            u_pick, u_delta = rng.random(num_clusters), rng.random(num_clusters)  # one draw per cluster j
            in_cluster = presence[a, others]
            available = sizes[others] - in_cluster
            r = (u_pick[others] * np.maximum(available, 1)).astype(np.int64)
            for t in np.flatnonzero(in_cluster):  # a is in cluster j: step over its position there
                j = others[t]
                pos = int(np.searchsorted(clusters[j], a))
                r[t] += r[t] >= pos
            ok = available > 0
            skipped["phantom_cluster_empty"] += int(((sizes[others] == 0)).sum())
            skipped["phantom_cluster_only_dominant"] += int(((sizes[others] > 0) & ~ok).sum())
            m = int(ok.sum())
            block = out[filled:filled + m]
            block["dominant"] = a
            block["phantom"] = members[starts[others[ok]] + r[ok]]
            block["delta"] = delta.draw(u_delta[others[ok]])
            block["k"] = k
            block["j"] = others[ok]
            filled += m
    return out[:filled], skipped


def within_rows(presence: np.ndarray, delta: DeltaSpec, seed: int, stream: int):
    """Ca_fb: each image of cluster k with a random other image of the same cluster k."""
    rows, skipped = [], {"cluster_only_dominant": 0}
    for k in range(presence.shape[1]):
        members = np.flatnonzero(presence[:, k])
        for a in members:
            rng = np.random.default_rng([seed, stream, k, int(a)])
            u_pick, u_delta = rng.random(2)
            b = pick_excluding(members, int(a), u_pick)
            if b < 0:
                skipped["cluster_only_dominant"] += 1
                continue
            rows.append((a, b, delta.draw(np.array(u_delta))[()], k, k, 0))
    return np.array(rows, dtype=PLAN_DTYPE) if rows else _rows(0), skipped


def random_rows(images: np.ndarray, pairs: int, delta: DeltaSpec, seed: int, stream: int):
    """R_fb / WR_fb: each image of ``images`` with ``pairs`` random others of ``images``, any
    class (drawn with replacement across the image's pairs)."""
    images = np.sort(np.asarray(images, dtype=np.int64))
    out = _rows(len(images) * pairs)
    skipped = {"no_other_image": 0}
    filled = 0
    if len(images) < 2:
        skipped["no_other_image"] = len(images) * pairs
        return out[:0], skipped
    for pos, a in enumerate(images):
        rng = np.random.default_rng([seed, stream, int(a)])
        u_pick, u_delta = rng.random(pairs), rng.random(pairs)
        r = (u_pick * (len(images) - 1)).astype(np.int64)
        r += r >= pos  # step over a itself
        block = out[filled:filled + pairs]
        block["dominant"] = a
        block["phantom"] = images[r]
        block["delta"] = delta.draw(u_delta)
        block["rep"] = np.arange(pairs)
        filled += pairs
    return out, skipped


def half_rows(n: int, pairs: int, delta: DeltaSpec, seed: int, stream: int):
    """M_fb: a seeded random half of the images blended in random pairs among themselves, the
    other half kept standard (δ = 1, no phantom). The blended half is the larger one when n is odd."""
    order = np.random.default_rng([seed, stream]).permutation(n)
    blended, standard = np.sort(order[: (n + 1) // 2]), np.sort(order[(n + 1) // 2:])
    mixed, skipped = random_rows(blended, pairs, delta, seed, stream)
    plain = _rows(len(standard))
    plain["dominant"] = standard
    plain["phantom"] = -1
    plain["delta"] = 1.0
    return np.concatenate([mixed, plain]), skipped


# -- order --------------------------------------------------------------------------------------
def subsample_rows(rows: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    """``max_samples`` rows drawn without replacement from a generator of its own seeded with
    ``(seed, stream)``, kept in plan order (runs sharing a dominant stay together, and the
    shuffled group order still mixes every block); all rows when there are not more."""
    if len(rows) <= max_samples:
        return rows
    keep = np.random.default_rng([seed, _SUBSAMPLE_STREAM]).choice(len(rows), size=max_samples, replace=False)
    return rows[np.sort(keep)]

def shuffle_groups(rows: np.ndarray, seed: int) -> np.ndarray:
    """Put the runs of rows sharing (dominant, k) in one seeded random order, rows inside a
    run kept together: one decode of the dominant serves its run, and every block of rows
    mixes all clusters."""
    if len(rows) == 0:
        return rows
    new_run = np.ones(len(rows), dtype=bool)
    new_run[1:] = (rows["dominant"][1:] != rows["dominant"][:-1]) | (rows["k"][1:] != rows["k"][:-1])
    group = np.cumsum(new_run) - 1  # (R,) run number
    rank = np.random.default_rng([seed, _ORDER_STREAM]).permutation(int(new_run.sum()))
    return rows[np.argsort(rank[group], kind="stable")]
