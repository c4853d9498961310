"""``blendgen stats``: the class-pair distribution and the δ histogram of a shard directory.

``stats`` reads only the small ``pair`` and ``delta`` datasets of every shard (the class-set
datasets only for samples without a pair) and reports the (dominant cluster k, phantom
cluster j) count matrix and the δ histogram. For the clustered strategy C_fb (BMVC 3.1) every
ordered pair of categories k != j must be present; ``stats`` says how many of the N(N-1) are.

It returns a plain dict (the ``--json`` output); ``format_stats`` turns it into text.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ..io import save_figure
from .directory import ShardDir
from .inspect import class_name, open_shard, pairing_classes, text_table
from .reader import ShardReader
from .schema import ShardError


@dataclass(frozen=True)
class StatsConfig:
    path: Path  # a shard directory (or one shard file)
    bins: int = 10  # δ histogram bins over [delta_low, 1]
    delta_low: float = 0.5  # δ > 0.5 always: the dominant is the stronger image
    out: Path | None = None  # PNG: pair heat map + δ histogram

    def __post_init__(self):
        if self.bins < 1:
            raise ValueError(f"bins: must be >= 1, got {self.bins}")
        if not 0.0 <= self.delta_low < 1.0:
            raise ValueError(f"delta_low: must be in [0, 1), got {self.delta_low}")
        if self.out is not None and Path(self.out).suffix.lower() != ".png":
            raise ValueError(f"out: expected a .png path, got {self.out}")


# -- stats ------------------------------------------------------------------------------------
def check_shard_bytes(path: str | Path) -> None:
    """Every sample's checksum: the statistics of a damaged shard would be silently wrong.
    Reads the image bytes too (the checksum covers them) but decodes nothing."""
    reader = ShardReader(path)
    try:
        reader.check_all()
    finally:
        reader.close()


def stats(config: StatsConfig, progress: bool = True) -> dict:
    """Pair-count matrix and δ histogram of every sample, decoding no image; also writes
    ``config.out`` (heat map and histogram) if given. Every sample's checksum is checked first."""
    path = Path(config.path)
    if not path.exists():
        raise ShardError(f"{path}: no such file or directory")
    if path.is_dir():
        sdir = ShardDir.open(path)
        classes, paths = pairing_classes(sdir) or sdir.classes, sdir.shard_paths  # pairs index the pairing classes
        kind, generation = sdir.manifest["kind"], sdir.manifest["generation"]
    else:
        reader = open_shard(path)
        classes, paths = reader.header.classes, [path]
        kind, generation = reader.header.kind, reader.header.generation
    object_ids = classes.object_ids
    n_obj = len(object_ids)
    column = np.full(256, -1, dtype=np.int64)  # label id -> matrix index
    column[object_ids] = np.arange(n_obj)

    counts = np.zeros((n_obj, n_obj), dtype=np.int64)  # [dominant k, phantom j]
    edges = np.linspace(config.delta_low, 1.0, config.bins + 1)
    hist = np.zeros(config.bins, dtype=np.int64)
    below = above = samples = with_pair = from_sets = unpaired = 0
    d_min, d_max, d_sum = math.inf, -math.inf, 0.0
    for p in tqdm(paths, unit="shard", desc="checking, reading pair, delta", disable=not progress):
        check_shard_bytes(p)
        try:
            f = h5py.File(p, "r")
        except OSError as exc:
            raise ShardError(f"{p}: not a readable HDF5 file ({exc})") from None
        with f:
            for name in ("pair", "delta", "dominant_classes", "phantom_classes"):
                if name not in f:
                    raise ShardError(f"{p}: dataset {name!r} missing; not a {kind} shard of this format")
            pair = f["pair"][:].astype(np.int64)  # (n, 2)
            delta = f["delta"][:].astype(np.float64)  # (n,)
            n = len(delta)
            samples += n
            if n:
                d_min, d_max, d_sum = min(d_min, delta.min()), max(d_max, delta.max()), d_sum + delta.sum()
            hist += np.histogram(delta, bins=edges)[0]  # the last bin includes δ = 1.0
            below += int((delta < config.delta_low).sum())
            above += int((delta > 1.0).sum())

            has = (pair >= 0).all(axis=1)
            bad = has & (pair >= n_obj).any(axis=1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ShardError(f"{p}: sample {i} has pair {pair[i].tolist()} outside 0..{n_obj - 1}")
            np.add.at(counts, (pair[has, 0], pair[has, 1]), 1)
            with_pair += int(has.sum())
            if not has.all():
                # No cluster pair recorded (e.g. random pairing): fall back to the class sets,
                # counting every (dominant class, phantom class) combination of the sample.
                # Whole vlen datasets at once: one h5py read per sample would dominate.
                dom, pha = f["dominant_classes"][:], f["phantom_classes"][:]
                ks, js = [], []
                for i in np.flatnonzero(~has):
                    a = column[dom[i].astype(np.int64)]
                    b = column[pha[i].astype(np.int64)]
                    a, b = a[a >= 0], b[b >= 0]
                    if len(a) and len(b):
                        ks.append(np.repeat(a, len(b)))
                        js.append(np.tile(b, len(a)))
                        from_sets += 1
                    else:
                        unpaired += 1
                if ks:
                    np.add.at(counts, (np.concatenate(ks), np.concatenate(js)), 1)

    off = ~np.eye(n_obj, dtype=bool)
    present = counts[off][counts[off] > 0]
    names = [class_name(classes, int(i)) for i in object_ids]
    order = np.argsort(-counts[off], kind="stable")
    cells = [(names[k], names[j]) for k in range(n_obj) for j in range(n_obj) if k != j]
    vals = counts[off]
    result = {
        "path": str(path),
        "kind": kind,
        "generation": generation,
        "shards": len(paths),
        "samples": samples,
        "classes": names,
        "pair_counts": counts.tolist(),
        "samples_with_pair": with_pair,
        "samples_from_class_sets": from_sets,
        "samples_without_pair": unpaired,
        "pairs_possible": int(n_obj * (n_obj - 1)),
        "pairs_present": int(len(present)),
        "pair_count_min": int(present.min()) if len(present) else 0,
        "pair_count_median": float(np.median(present)) if len(present) else 0.0,
        "pair_count_max": int(present.max()) if len(present) else 0,
        "same_category": int(np.trace(counts)),
        "most_frequent": [[*cells[i], int(vals[i])] for i in order[:5] if vals[i] > 0],
        "missing_pairs": [list(cells[i]) for i in range(len(cells)) if vals[i] == 0],
        "as_dominant": counts.sum(axis=1).tolist(),
        "as_phantom": counts.sum(axis=0).tolist(),
        "delta_edges": edges.tolist(),
        "delta_counts": hist.tolist(),
        "delta_below_range": below,
        "delta_above_one": above,
        "delta_min": float(d_min) if samples else None,
        "delta_mean": d_sum / samples if samples else None,
        "delta_max": float(d_max) if samples else None,
    }
    if config.out is not None:
        write_stats_png(result, config.out)
    return result


def format_stats(s: dict) -> str:
    g = s["generation"]
    shown = [k for k in ("strategy", "delta", "seed") if k in g] or list(g)  # `inspect` lists them all
    gen = ", ".join(f"{k}={json.dumps(g[k])}" for k in shown) or "-"
    lines = [f"{s['path']}: {s['kind']}, {s['samples']} samples in {s['shards']} shards ({gen})", ""]
    n_pairs = s["samples_with_pair"] + s["samples_from_class_sets"]
    if n_pairs == 0:
        lines.append(f"class pairs: none ({s['samples_without_pair']} samples have no pair and no phantom classes)")
    else:
        src = f"{s['samples_with_pair']} samples from `pair`"
        if s["samples_from_class_sets"]:
            src += (f", {s['samples_from_class_sets']} from class sets (every dominant x phantom class "
                    f"combination counts once)")
        if s["samples_without_pair"]:
            src += f", {s['samples_without_pair']} with no pair and no phantom classes"
        pct = 100.0 * s["pairs_present"] / s["pairs_possible"] if s["pairs_possible"] else 0.0
        lines += [
            f"class pairs (dominant cluster k, phantom cluster j): {src}",
            f"  ordered pairs k != j present: {s['pairs_present']} / {s['pairs_possible']} ({pct:.1f}%)",
            f"  count per present pair: min {s['pair_count_min']}, median {s['pair_count_median']:g}, "
            f"max {s['pair_count_max']}",
            f"  same category (k == j): {s['same_category']}",
            "  most frequent: " + (", ".join(f"{a}->{b} {c}" for a, b, c in s["most_frequent"]) or "-"),
        ]
        missing = s["missing_pairs"]
        if missing:
            text = ", ".join(f"{a}->{b}" for a, b in missing[:24]) + (", ..." if len(missing) > 24 else "")
            lines.append(textwrap.fill(text, width=100, initial_indent=f"  missing ({len(missing)}): ",
                                       subsequent_indent=" " * 6, break_on_hyphens=False))
        lines += ["", "  per class:"]
        lines += ["    " + r for r in text_table(
            ["class", "as dominant", "as phantom"],
            [[n, str(d), str(p)] for n, d, p in zip(s["classes"], s["as_dominant"], s["as_phantom"])])]
    lines += ["", f"delta histogram ({len(s['delta_counts'])} bins over [{s['delta_edges'][0]:g}, 1]):"]
    top = max(s["delta_counts"]) if s["samples"] else 0
    edges, counts = s["delta_edges"], s["delta_counts"]
    for i, c in enumerate(counts):
        close = "]" if i == len(counts) - 1 else ")"
        bar = "#" * (round(40 * c / top) if top else 0)
        lines.append(f"  [{edges[i]:.3f}, {edges[i + 1]:.3f}{close}  {c:>9}  {bar}".rstrip())
    if s["delta_below_range"] or s["delta_above_one"]:
        lines.append(f"  outside the range: {s['delta_below_range']} below {edges[0]:g}, "
                     f"{s['delta_above_one']} above 1")
    if s["samples"]:
        lines.append(f"  min {s['delta_min']:.4f}  mean {s['delta_mean']:.4f}  max {s['delta_max']:.4f}")
    return "\n".join(lines)


def write_stats_png(s: dict, out: str | Path) -> None:
    """Pair-count heat map (missing off-diagonal pairs in red) beside the δ histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = s["classes"]
    n = len(names)
    counts = np.asarray(s["pair_counts"], dtype=np.int64).reshape(n, n)
    side = max(5.0, 0.32 * n + 2.5)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(side + 5.5, side), dpi=100,
                                 gridspec_kw={"width_ratios": [side, 5.0]})
    shown = np.ma.masked_equal(counts, 0)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # zero cells (masked) stay white
    im = ax.imshow(shown, cmap=cmap, interpolation="nearest")
    missing = (counts == 0) & ~np.eye(n, dtype=bool)
    mark_missing = missing.any() and s["samples_with_pair"] + s["samples_from_class_sets"] > 0
    if mark_missing:
        ys, xs = np.nonzero(missing)
        ax.scatter(xs, ys, marker="x", s=12 if n > 30 else 30, color="red", linewidths=1)
    fs = 7 if n <= 30 else 4
    ax.set_xticks(range(n), names, rotation=90, fontsize=fs)
    ax.set_yticks(range(n), names, fontsize=fs)
    ax.set_xlabel("phantom cluster j")
    ax.set_ylabel("dominant cluster k")
    if n <= 25:  # counts are legible only on small matrices; dark text on the light colours
        top = max(1, counts.max())
        for k in range(n):
            for j in range(n):
                if counts[k, j]:
                    ax.text(j, k, str(counts[k, j]), ha="center", va="center", fontsize=5,
                            color="black" if counts[k, j] > 0.6 * top else "white")
    ax.set_title(f"samples per (k, j): {s['pairs_present']}/{s['pairs_possible']} pairs k≠j present, "
                 f"min {s['pair_count_min']} / median {s['pair_count_median']:g} / max {s['pair_count_max']}"
                 + ("\n(red x: missing pair)" if mark_missing else ""), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="samples",
                 ticks=MaxNLocator(integer=True))

    edges = np.asarray(s["delta_edges"])
    bx.bar(edges[:-1], s["delta_counts"], width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white")
    bx.set_xlim(edges[0], edges[-1])
    bx.set_xlabel("δ (weight of the dominant)")
    bx.set_ylabel("samples")
    bx.set_title(f"δ histogram, {s['samples']} samples", fontsize=9)
    strategy = s["generation"].get("strategy")
    fig.suptitle(f"{s['path']}: {s['kind']}, {s['samples']} samples"
                 + (f", strategy {strategy}" if strategy else ""), fontsize=10)
    fig.tight_layout()
    save_figure(fig, out)
