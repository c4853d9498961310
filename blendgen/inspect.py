"""``blendgen inspect`` and ``blendgen stats``: look at generated shards.

``inspect`` reports what a shard holds without decoding images: the schema (dataset names,
dtypes, shapes, chunking), the root attributes (class names, palette, generation parameters)
and a table of per-sample metadata with class names. Given a shard *directory* it first
summarises the manifest, then inspects one shard of it. With ``out`` it renders one sample as a
PNG: the blended image, the dominant label map G_a and the phantom label map G_b in the dataset
palette (as colour maps and overlaid on the image), with a legend of the classes present.

``stats`` reads only the small ``pair`` and ``delta`` datasets of every shard (the class-set
datasets only for samples without a pair) and reports the (dominant cluster k, phantom
cluster j) count matrix and the δ histogram. For the clustered strategy C_fb (BMVC 3.1) every
ordered pair of categories k != j must be present; ``stats`` says how many of the N(N-1) are.

Both functions return plain dicts (the ``--json`` output); ``format_*`` turn them into text.
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

from .datasets.classes import ClassSet
from .io import save_figure
from .shards import SCHEMA, Sample, ShardDir, ShardError, ShardHeader, ShardReader, verify_shard

# manifest keys that the summary prints itself; everything else (what a writer adds through
# ``manifest_dict(extra=...)``, e.g. skip counts) is listed as-is.
_MANIFEST_KNOWN = {"format", "format_version", "tool_version", "kind", "split", "classes", "object_ids",
                   "cooccurrence", "source", "generation", "image_codec", "image_quality", "image_chroma",
                   "num_samples", "shards"}


@dataclass(frozen=True)
class InspectConfig:
    path: Path  # a shard file or a shard directory
    shard: str | None = None  # shard file name inside a directory (default: its first shard)
    limit: int = 20  # rows of the per-sample table
    index: int | None = None  # one sample: full record, and the picture if ``out`` is given
    out: Path | None = None  # PNG of sample ``index`` (0 if not given)

    def __post_init__(self):
        if self.limit < 0:
            raise ValueError(f"limit: must be >= 0, got {self.limit}")
        if self.index is not None and self.index < 0:
            raise ValueError(f"index: must be >= 0, got {self.index}")
        if self.out is not None and Path(self.out).suffix.lower() != ".png":
            raise ValueError(f"out: expected a .png path, got {self.out}")


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


# -- opening ----------------------------------------------------------------------------------
def open_shard(path: str | Path) -> ShardReader:
    """A :class:`ShardReader`, with every way of not being a shard turned into a ShardError."""
    path = Path(path)
    if not path.exists():
        raise ShardError(f"{path}: no such file or directory")
    if path.is_dir():
        raise ShardError(f"{path}: is a directory, expected a shard file")
    try:
        return ShardReader(path)
    except OSError as exc:
        raise ShardError(f"{path}: not a readable HDF5 file ({exc})") from None
    except KeyError as exc:
        raise ShardError(f"{path}: shard attribute {exc} missing") from None


def resolve(path: str | Path, shard: str | None = None) -> tuple[ShardDir | None, Path | None]:
    """``(shard directory or None, the shard file to inspect)`` for a file or directory path;
    the file is None for a directory without shards."""
    path = Path(path)
    if not path.exists():
        raise ShardError(f"{path}: no such file or directory")
    if not path.is_dir():
        if shard is not None:
            raise ShardError(f"--shard {shard}: only valid when {path} is a shard directory")
        return None, path
    sdir = ShardDir.open(path)
    names = [e["name"] for e in sdir.manifest["shards"]]
    if shard is None:
        if not names:
            return sdir, None
        return sdir, path / names[0]
    if shard not in names:
        listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ShardError(f"{path}: no shard {shard!r} in the manifest (has {len(names)}: {listed})")
    return sdir, path / shard


# -- plain values -----------------------------------------------------------------------------
def _plain(v):
    """An HDF5 attribute or dataset element as a JSON-able Python value."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v] if v.dtype == object else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def dtype_name(dt: np.dtype) -> str:
    """``vlen uint8``, ``str (utf-8)``, ``float32``: the dtype as a person reads it."""
    string = h5py.check_string_dtype(dt)
    if string is not None:
        return f"str ({string.encoding})" if string.length is None else f"str{string.length} ({string.encoding})"
    base = h5py.check_vlen_dtype(dt)
    if base is not None:
        return f"vlen {np.dtype(base).name}"
    return dt.name


def schema_of(f: h5py.File) -> list[dict]:
    """One entry per dataset in the file, in :data:`SCHEMA` order, then any others."""
    names = [n for n in SCHEMA if n in f] + sorted(n for n in f if n not in SCHEMA)
    out = []
    for name in names:
        ds = f[name]
        out.append({
            "name": name,
            "dtype": dtype_name(ds.dtype),
            "shape": list(ds.shape),
            "maxshape": [None if m is None else int(m) for m in ds.maxshape],
            "chunks": None if ds.chunks is None else list(ds.chunks),
            "compression": ds.compression,
            "description": _plain(ds.attrs.get("description", "")),
            "in_schema": name in SCHEMA,
        })
    return out


def class_name(classes: ClassSet, label_id: int) -> str:
    if 0 <= label_id < classes.num_classes:
        return classes.names[label_id]
    return "ignore" if label_id == classes.ignore_index else f"#{label_id}"


def pair_names(classes: ClassSet, pair) -> str:
    """``cat->dog`` for matrix indices (k, j) (matrix index k is label id ``object_ids[k]``)."""
    k, j = int(pair[0]), int(pair[1])
    if k < 0 or j < 0:
        return "-"
    ids = classes.object_ids
    name = lambda m: class_name(classes, int(ids[m])) if m < len(ids) else f"#{m}?"  # noqa: E731
    return f"{name(k)}->{name(j)}"


def pairing_classes(sdir: ShardDir | None) -> ClassSet | None:
    """The class set that ``dominant_classes``, ``phantom_classes`` and ``pair`` refer to when it
    is not the label's: saliency shards pair by pseudo-label classes (manifest ``pairing``)."""
    pairing = None if sdir is None else sdir.manifest.get("pairing")
    if not isinstance(pairing, dict) or "class_names" not in pairing:
        return None
    return ClassSet(names=tuple(pairing["class_names"]), background=tuple(pairing.get("background", (0,))))


def sample_rows(f: h5py.File, header: ShardHeader, start: int, stop: int,
                set_classes: ClassSet | None = None) -> list[dict]:
    """Per-sample metadata of samples ``start..stop-1`` from the small datasets only; class sets
    and pairs named in ``set_classes`` (default: the label's classes)."""
    set_classes = set_classes or header.classes
    if stop <= start:
        return []
    sl = slice(start, stop)
    cols = {name: f[name].asstr()[sl] for name in ("key", "dominant_id", "phantom_id")}
    cols.update({name: f[name][sl] for name in ("delta", "height", "width", "dominant_classes",
                                                "phantom_classes", "pair", "instances", "occluded")})
    names = lambda ids: [class_name(set_classes, int(c)) for c in ids]  # noqa: E731
    rows = []
    for n in range(stop - start):
        occluded = [int(o) for o in cols["occluded"][n]]
        rows.append({
            "index": start + n,
            "key": cols["key"][n],
            "dominant_id": cols["dominant_id"][n],
            "phantom_id": cols["phantom_id"][n],
            "delta": float(cols["delta"][n]),
            "height": int(cols["height"][n]),
            "width": int(cols["width"][n]),
            "dominant_classes": names(cols["dominant_classes"][n]),
            "phantom_classes": names(cols["phantom_classes"][n]),
            "pair": [int(p) for p in cols["pair"][n]],
            "pair_names": pair_names(set_classes, cols["pair"][n]),
            "instances": int(cols["instances"][n]),
            "occluded": occluded,
        })
    return rows


def manifest_summary(sdir: ShardDir) -> dict:
    m = sdir.manifest
    shards = m["shards"]
    classes = sdir.classes
    return {
        "path": str(sdir.path),
        "kind": m["kind"],
        "split": m["split"],
        "num_samples": sdir.num_samples,
        "num_shards": len(shards),
        "shards": [{"name": e["name"], "samples": e["samples"], "bytes": e.get("bytes")} for e in shards],
        "bytes": sum(e.get("bytes", 0) for e in shards),
        "num_classes": classes.num_classes,
        "object_classes": len(classes.object_ids),
        "cooccurrence": m.get("cooccurrence") is not None,
        "generation": m["generation"],
        "source": m["source"],
        "image_codec": m["image_codec"],
        "image_quality": m["image_quality"],
        "image_chroma": m.get("image_chroma"),
        "tool_version": m.get("tool_version"),
        "extra": {k: v for k, v in m.items() if k not in _MANIFEST_KNOWN},
    }


# -- inspect ----------------------------------------------------------------------------------
def inspect(config: InspectConfig) -> dict:
    """Everything ``blendgen inspect`` prints, as a dict; writes ``config.out`` if given."""
    sdir, shard_path = resolve(config.path, config.shard)
    report: dict = {"manifest": manifest_summary(sdir) if sdir is not None else None}
    if shard_path is None:  # an empty directory: nothing more to show
        if config.index is not None or config.out is not None:
            raise ShardError(f"{config.path}: holds no shards")
        return report
    reader = open_shard(shard_path)
    verify_shard(shard_path)  # every schema dataset present, all of num_samples: the table can be read
    try:
        n = reader.num_samples
        index = config.index if config.index is not None else (0 if config.out is not None else None)
        if index is not None and not 0 <= index < n:
            raise ShardError(f"{shard_path}: sample {index} out of range (the shard holds {n}: 0..{n - 1})")
        f = reader.file
        report.update({
            "path": str(shard_path),
            "num_samples": n,
            "schema": schema_of(f),
            "attrs": {k: _plain(v) for k, v in sorted(f.attrs.items())},
        })
        shown = range(min(n, config.limit)) if index is None else [index]
        for i in shown:  # what is shown is what was written: CorruptSample otherwise
            reader.read_raw(i)
        if index is None:
            report["samples"] = sample_rows(f, reader.header, 0, min(n, config.limit), pairing_classes(sdir))
        else:
            row = sample_rows(f, reader.header, index, index + 1, pairing_classes(sdir))[0]
            row["bytes"] = {name: int(len(f[name][index])) for name in ("image", "label", "phantom_label")}
            report["samples"] = [row]
            if config.out is not None:
                render_sample(reader.read(index), reader.header, config.out)
                report["rendered"] = str(config.out)
    finally:
        reader.close()
    return report


def _fmt_attr(name: str, value, width: int = 100) -> str:
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        body = ", ".join(value)
        head = f"  {name} [{len(value)}]: "
    elif isinstance(value, list) and value and isinstance(value[0], list):  # a matrix, e.g. the palette
        arr = np.asarray(value)
        rows = " ".join(str(tuple(r)) for r in arr[:6].tolist())
        return f"  {name} [{' x '.join(map(str, arr.shape))}]: {rows}" + (" ..." if len(arr) > 6 else "")
    else:
        body, head = json.dumps(value) if not isinstance(value, str) else value, f"  {name}: "
    return _wrap(head, body, width)


def _wrap(head: str, text: str, width: int = 100) -> str:
    return textwrap.fill(text, width=width, initial_indent=head, subsequent_indent=" " * 6,
                         break_long_words=False, break_on_hyphens=False)


def _table(headers: list[str], rows: list[list[str]], max_width: int = 36) -> list[str]:
    clip = lambda s: s if len(s) <= max_width else s[: max_width - 3] + "..."  # noqa: E731
    rows = [[clip(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def format_inspect(report: dict) -> str:
    lines: list[str] = []
    m = report.get("manifest")
    if m is not None:
        gen = ", ".join(f"{k}={json.dumps(v)}" for k, v in m["generation"].items()) or "-"
        src = ", ".join(f"{k}={json.dumps(v)}" for k, v in m["source"].items()) or "-"
        counts = ", ".join(f"{s['name']} {s['samples']}" for s in m["shards"][:8])
        counts += ", ..." if m["num_shards"] > 8 else ""
        lines += [
            f"shard directory {m['path']}",
            f"  kind: {m['kind']}  split: {m['split']}  samples: {m['num_samples']}  shards: {m['num_shards']}"
            f"  ({m['bytes'] / 2**20:.1f} MiB)",
            f"  shards: {counts or '-'}",
            f"  classes: {m['num_classes']} ({m['object_classes']} object classes)  image codec: "
            f"{m['image_codec']} q{m['image_quality']}"
            + (f" chroma {m['image_chroma']}" if m["image_chroma"] and m["image_codec"] == "jpeg" else "")
            + f"  co-occurrence matrix: {'yes' if m['cooccurrence'] else 'no'}",
        ]
        lines += [_wrap("  generation: ", gen), _wrap("  source: ", src)]
        lines += [_wrap(f"  {k}: ", json.dumps(v)) for k, v in m["extra"].items()]
        lines.append("")
    if "path" not in report:
        lines.append("(no shards)")
        return "\n".join(lines)

    lines += [f"shard {report['path']}: {report['num_samples']} samples", "", "schema:"]
    lines += ["  " + s for s in _table(
        ["dataset", "dtype", "shape", "max", "chunks", "meaning"],
        [[d["name"], d["dtype"], "x".join(map(str, d["shape"])),
          "x".join("inf" if x is None else str(x) for x in d["maxshape"]),
          "x".join(map(str, d["chunks"])) if d["chunks"] else "contiguous",
          d["description"] + ("" if d["in_schema"] else " (not in schema)")] for d in report["schema"]],
        max_width=90)]
    lines += ["", "attributes:"]
    lines += [_fmt_attr(k, v) for k, v in report["attrs"].items()]

    rows = report["samples"]
    lines += ["", "samples:"]
    dash = lambda s: s if s else "-"  # noqa: E731
    lines += ["  " + s for s in _table(
        ["index", "key", "dominant_id", "phantom_id", "delta", "HxW", "dominant classes", "phantom classes",
         "pair", "inst", "occluded"],
        [[str(r["index"]), r["key"], dash(r["dominant_id"]), dash(r["phantom_id"]), f"{r['delta']:.3f}",
          f"{r['height']}x{r['width']}", dash(", ".join(r["dominant_classes"])),
          dash(", ".join(r["phantom_classes"])), r["pair_names"],
          "?" if r["instances"] < 0 else str(r["instances"]),
          f"{sum(r['occluded'])}/{len(r['occluded'])}" if r["occluded"] else "?"] for r in rows])]
    if len(rows) == 1 and "bytes" in rows[0]:
        b = rows[0]["bytes"]
        lines.append(f"  encoded bytes: image {b['image']}, label {b['label']}, phantom_label {b['phantom_label']}")
    elif len(rows) < report["num_samples"]:
        lines.append(f"  ({len(rows)} of {report['num_samples']} shown; --limit N for more)")
    if "rendered" in report:
        lines += ["", f"wrote {report['rendered']}"]
    return "\n".join(lines)


# -- the picture ------------------------------------------------------------------------------
def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ids -> (H, W, 3) uint8 palette colours."""
    return palette[label]


def overlay(image: np.ndarray, label: np.ndarray, classes: ClassSet, alpha: float = 0.5) -> np.ndarray:
    """The label's colours blended at ``alpha`` over the image where it is not background, so
    the image stays visible and the objects (and void bands) show in their colours."""
    out = image.astype(np.float32)
    mask = ~np.isin(label, classes.background)  # (H, W)
    out[mask] = (1 - alpha) * out[mask] + alpha * classes.palette[label[mask]].astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def upscale(arr: np.ndarray, min_side: int = 320) -> np.ndarray:
    """Nearest-neighbour integer upscaling so the longer side is at least ``min_side``: small
    images stay crisp (label edges exact) instead of being smeared by the figure resampler."""
    factor = max(1, math.ceil(min_side / max(arr.shape[:2])))
    return arr if factor == 1 else np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def legend_entries(sample: Sample, classes: ClassSet) -> list[tuple[str, tuple[float, float, float]]]:
    """(``name (G_a, G_b)``, colour) for every label value present in either map, by id."""
    maps = [("G_a", sample.label)] + ([("G_b", sample.phantom_label)] if sample.phantom_label is not None else [])
    present: dict[int, list[str]] = {}
    for tag, lab in maps:
        for v in np.flatnonzero(np.bincount(lab.ravel(), minlength=256)):
            present.setdefault(int(v), []).append(tag)
    entries = []
    for v in sorted(present):
        name = class_name(classes, v)
        tags = f" ({', '.join(present[v])})" if sample.phantom_label is not None else ""
        entries.append((f"{v} {name}{tags}", tuple(classes.palette[v] / 255.0)))
    return entries


def render_sample(sample: Sample, header: ShardHeader, out: str | Path) -> None:
    """Write a PNG of one sample: image, label maps as colours and as overlays, legend, title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    classes = header.classes
    names = lambda ids: ", ".join(class_name(classes, c) for c in ids) or "none"  # noqa: E731
    h, w = sample.label.shape
    if sample.phantom_label is None:
        panels = [
            (upscale(sample.image), f"image ({h}x{w})"),
            (upscale(colorize(sample.label, classes.palette)), "label G"),
            (upscale(overlay(sample.image, sample.label, classes)), "label over image"),
        ]
        grid = (2, 2)
        title = (f"{sample.key}  (standard, δ = {sample.delta:.3f})\n"
                 f"image {sample.dominant_id}: {names(sample.dominant_classes)}")
    else:
        panels = [
            (upscale(sample.image), f"blended image ({h}x{w})"),
            (upscale(colorize(sample.label, classes.palette)), "dominant G_a"),
            (upscale(colorize(sample.phantom_label, classes.palette)), "phantom G_b"),
            (upscale(overlay(sample.image, sample.label, classes)), "G_a over image"),
            (upscale(overlay(sample.image, sample.phantom_label, classes)), "G_b over image"),
        ]
        grid = (2, 3)
        title = (f"{sample.key}   δ = {sample.delta:.3f}   pair {pair_names(classes, sample.pair)}\n"
                 f"dominant {sample.dominant_id}: {names(sample.dominant_classes)}   |   "
                 f"phantom {sample.phantom_id}: {names(sample.phantom_classes)}")

    rows, cols = grid
    ph, pw = panels[0][0].shape[:2]
    panel_w = 3.6  # inches per panel; height follows the image's aspect ratio
    panel_h = max(1.8, panel_w * ph / pw)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel_w, rows * panel_h + 1.0), dpi=100, squeeze=False)
    flat = axes.ravel()
    # The legend takes the bottom-left cell for mixed samples, the last cell for standard ones.
    legend_ax = flat[cols] if sample.phantom_label is not None else flat[-1]
    others = [ax for ax in flat if ax is not legend_ax]
    for ax, (img, label) in zip(others, panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    legend_ax.axis("off")
    entries = legend_entries(sample, classes)
    legend_ax.legend(handles=[Patch(facecolor=c, edgecolor="black", label=t) for t, c in entries],
                     loc="center", frameon=False, fontsize=9, title="classes present", title_fontsize=10,
                     ncol=1 if len(entries) <= 12 else 2, handlelength=2.0, handleheight=1.4)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out)


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
        lines += ["    " + r for r in _table(
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
