"""``blendgen inspect``: what a shard holds, for a person.

``inspect`` reports what a shard holds without decoding images: the schema (dataset names,
dtypes, shapes, chunking), the root attributes (class names, palette, generation parameters)
and a table of per-sample metadata with class names. Given a shard *directory* it first
summarises the manifest, then inspects one shard of it. With ``out`` it renders one sample as a
PNG: the blended image, the dominant label map G_a and the phantom label map G_b in the dataset
palette (as colour maps and overlaid on the image), with a legend of the classes present.

It returns a plain dict (the ``--json`` output); ``format_inspect`` turns it into text. The
opening and naming helpers here serve ``blendgen stats`` too (:mod:`blendgen.shards.stats`).
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..datasets.classes import ClassSet
from ..io import save_figure
from .directory import ShardDir
from .reader import ShardReader
from .schema import SCHEMA, Sample, ShardError, ShardHeader, verify_shard

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


def text_table(headers: list[str], rows: list[list[str]], max_width: int = 36) -> list[str]:
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
    lines += ["  " + s for s in text_table(
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
    lines += ["  " + s for s in text_table(
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


