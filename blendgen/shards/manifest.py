"""A shard directory's ``manifest.json``: its shape, the shards it lists, and the fragments that
parts of a run (``--part i/n``) write and merge. A directory may be written by several
processes or machines at once: each part writes its own shards and a fragment
``manifest.part-I-of-N.json`` listing them; the fragments, all present, merge into
``manifest.json``. A rerun keeps every shard that is complete and is the one it would write, and
rewrites the rest (:mod:`blendgen.shards.runner`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..datasets.classes import ClassSet
from ..io import write_json
from .reader import ShardReader
from .schema import FORMAT, FORMAT_VERSION, ShardError, ShardHeader, as_str, verify_shard
from .writer import sha256_file

MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def load_manifest(directory: str | Path) -> dict:
    """The parsed ``manifest.json`` of a shard directory, checked for shape: ShardError in one
    line naming the file and what is wrong."""
    mpath = Path(directory) / MANIFEST
    if not mpath.is_file():
        raise ShardError(f"{mpath}: missing; not a shard directory (run `blendgen mix` or `blendgen pack`)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"{mpath}: unreadable manifest ({exc})") from None
    except OSError as exc:
        raise ShardError(f"{mpath}: unreadable manifest ({exc.strerror or exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{mpath}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(f"{mpath}: format version {manifest.get('format_version')!r} (this tool reads "
                         f"{FORMAT_VERSION}); regenerate the directory with this version's `blendgen mix` / `pack`")
    for key, kind in (("shards", list), ("classes", dict), ("kind", str), ("split", str)):
        if not isinstance(manifest.get(key), kind):
            raise ShardError(f"{mpath}: {key!r} missing or not a {kind.__name__}")
    try:
        ClassSet.from_json(manifest["classes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{mpath}: malformed 'classes' ({exc})") from None
    names = [check_entry(e, i, mpath) for i, e in enumerate(manifest["shards"])]
    if len(set(names)) != len(names):
        raise ShardError(f"{mpath}: shard {next(n for n in names if names.count(n) > 1)!r} is listed twice")
    total = sum(e["samples"] for e in manifest["shards"])
    if manifest.get("num_samples", total) != total:
        raise ShardError(f"{mpath}: num_samples {manifest['num_samples']!r} is not the sum of the shards' {total}")
    return manifest


def check_entry(entry, i: int, mpath: Path) -> str:
    """One ``shards`` entry well-formed, naming a plain file of the manifest's directory (a
    manifest must not send readers to another directory's shards); returns the name."""
    if not isinstance(entry, dict):
        raise ShardError(f"{mpath}: shards[{i}] is not an object")
    name = entry.get("name")
    if not isinstance(name, str) or not plain_name(name):
        raise ShardError(f"{mpath}: shards[{i}] name {name!r} is not a plain file name in this directory")
    if not isinstance(entry.get("samples"), int) or isinstance(entry.get("samples"), bool) or entry["samples"] < 0:
        raise ShardError(f"{mpath}: shards[{i}] ({name}) 'samples' missing or not a count")
    if not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
        raise ShardError(f"{mpath}: shards[{i}] ({name}) 'sha256' missing or not a SHA-256 hex digest")
    if not isinstance(entry.get("bytes"), int) or isinstance(entry.get("bytes"), bool):
        raise ShardError(f"{mpath}: shards[{i}] ({name}) 'bytes' missing or not a size")
    return name


def plain_name(name: str) -> bool:
    """A file name without any directory part, not hidden, not '.' or '..'."""
    return bool(name) and name == os.path.basename(name) and "\\" not in name and not name.startswith(".")


def check_against_manifest(path: Path, entry: dict, manifest: dict) -> ShardHeader:
    """A listed shard's own header agrees with the manifest: ShardError naming the difference."""
    if not path.is_file():
        raise ShardError(f"{path}: listed in the manifest but missing")
    reader_header, n = read_header(path)
    expected = {"kind": manifest["kind"], "split": manifest["split"], "samples": entry["samples"],
                "classes": ClassSet.from_json(manifest["classes"])}
    found = {"kind": reader_header.kind, "split": reader_header.split, "samples": n, "classes": reader_header.classes}
    for key in ("image_codec",):
        if key in manifest:
            expected[key], found[key] = manifest[key], getattr(reader_header, key)
    wrong = [k for k in expected if expected[k] != found[k]]
    if wrong:
        k = wrong[0]
        what = "class set" if k == "classes" else f"{k} {found[k]!r}, the manifest says {expected[k]!r}"
        raise ShardError(f"{path}: does not match the manifest ({what if k != 'classes' else 'other ' + what})")
    return reader_header


def read_header(path: str | Path) -> tuple[ShardHeader, int]:
    """A shard's header and sample count, after the self-containment check."""
    r = ShardReader(path)
    return r.header, r.num_samples


def manifest_dict(header: ShardHeader, shards: list[dict], cooccurrence: np.ndarray | None = None,
                  extra: dict | None = None) -> dict:
    """The manifest of a shard directory; ``shards`` are :attr:`ShardWriter.info` entries in order."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "kind": header.kind,
        "split": header.split,
        "classes": header.classes.to_json(),
        "object_ids": header.classes.object_ids.tolist(),
        "cooccurrence": None if cooccurrence is None else np.asarray(cooccurrence).tolist(),
        "source": header.source,
        "generation": header.generation,
        "image_codec": header.image_codec,
        "image_quality": header.image_quality,
        "image_chroma": header.image_chroma,
        "num_samples": sum(s["samples"] for s in shards),
        "shards": shards,
        **(extra or {}),
    }


# -- parts and resume -------------------------------------------------------------------------
def part_manifest_name(index: int, count: int) -> str:
    return f"manifest.part-{index}-of-{count}.json"


def temp_paths(directory: str | Path, name: str) -> list[Path]:
    """Temporary files that writers of shard ``name`` left behind (a killed process cannot
    remove its own)."""
    return sorted(Path(directory).glob(f".{name}.tmp-*"))


def shard_info(path: str | Path, samples: int) -> dict:
    """The manifest entry of a complete shard."""
    path = Path(path)
    return {"name": path.name, "samples": samples, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def check_complete_shard(path: str | Path, header: ShardHeader, keys: list[str]) -> dict:
    """The manifest entry of an existing shard, after checking that it is exactly the shard
    this run would write: same format, header (classes, source, generation parameters, codec)
    and sample keys in the same order. ShardError naming the file otherwise."""
    path = Path(path)
    n = verify_shard(path)
    with h5py.File(path, "r") as f:
        found = ShardHeader.from_attrs(f.attrs, str(path))
        stored = [as_str(k) for k in f["key"][:]]
    if found != header:
        raise ShardError(f"{path}: written with other parameters ({header_difference(found, header)}); "
                         "delete it or write elsewhere")
    if stored != list(keys):
        raise ShardError(f"{path}: holds other samples than this run assigns to it; delete it or write elsewhere")
    return shard_info(path, n)


def header_difference(a: ShardHeader, b: ShardHeader) -> str:
    """The first fields in which two headers differ, for error messages."""
    diffs = []
    for name in ("kind", "split", "image_codec", "image_quality", "image_chroma", "classes"):
        if getattr(a, name) != getattr(b, name):
            diffs.append(f"{name} {getattr(a, name)!r} vs {getattr(b, name)!r}")
    for group in ("source", "generation"):
        da, db = getattr(a, group), getattr(b, group)
        diffs += [f"{group}.{k} {da.get(k)!r} vs {db.get(k)!r}" for k in sorted(da.keys() | db.keys()) if da.get(k) != db.get(k)]
    return ", ".join(diffs[:3]) or "none"


def merge_manifests(fragments: list[dict], where: str = "") -> dict:
    """One manifest from the fragments of all parts: the same header in each, shards disjoint
    and together all ``num_shards`` of the plan. ShardError if not."""
    if not fragments:
        raise ShardError(f"{where}: no manifest fragments to merge")
    common = {k: v for k, v in fragments[0].items() if k not in ("shards", "num_samples", "part")}
    for f in fragments[1:]:
        other = {k: v for k, v in f.items() if k not in ("shards", "num_samples", "part")}
        if other != common:
            keys = sorted(k for k in common.keys() | other.keys() if common.get(k) != other.get(k))
            raise ShardError(f"{where}: manifest fragments of different runs (they differ in {', '.join(keys)})")
    shards = sorted((s for f in fragments for s in f["shards"]), key=lambda s: s["name"])
    names = [s["name"] for s in shards]
    if len(set(names)) != len(names):
        raise ShardError(f"{where}: a shard is listed by two manifest fragments")
    expected = fragments[0]["part"]["num_shards"]
    if len(shards) != expected:
        raise ShardError(f"{where}: fragments list {len(shards)} of the plan's {expected} shards")
    return {**common, "num_samples": sum(s["samples"] for s in shards), "shards": shards}


def merge_part_manifests(directory: str | Path, count: int) -> dict:
    """Merge ``manifest.part-*-of-COUNT.json`` into ``manifest.json`` (atomically) and return it.
    ShardError naming the missing parts when some have not finished."""
    directory = Path(directory)
    paths = [directory / part_manifest_name(i, count) for i in range(1, count + 1)]
    missing = [str(i) for i, p in enumerate(paths, 1) if not p.is_file()]
    if missing:
        raise ShardError(f"{directory}: parts {', '.join(missing)} of {count} have not finished "
                         f"(no {part_manifest_name(int(missing[0]), count)})")
    manifest = merge_manifests([json.loads(p.read_text()) for p in paths], str(directory))
    write_json(directory / MANIFEST, manifest)
    return manifest
