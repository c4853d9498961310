"""``blendgen verify``: every byte of shard directories checked against what was written.

Per directory: the manifest's shape and containment (:func:`blendgen.shards.load_manifest`);
per shard: present, size and SHA-256 as the manifest says, format, schema and
self-containment, header against the manifest (kind, split, classes, codec, sample count),
then every sample's checksum; across the directory: sample keys unique, and no file the
manifest does not account for (an unlisted shard, a writer's temporary, a part manifest it was
not merged from, a killed writer's lock, anything else). A directory whose writer is still at
work (it holds a ``.lock-part-I-of-N``) is not checked but said to be busy. Reading is the cost
(one pass over the bytes for the SHA-256, one for the samples), so shards are checked in
parallel by ``workers`` processes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .manifest import MANIFEST, check_against_manifest, load_manifest
from .reader import ShardReader
from .schema import ShardError, verify_shard
from .writer import sha256_file

# How many damaged samples a problem line names before it only counts.
_NAMED = 3


@dataclass(frozen=True)
class Problem:
    where: str  # the shard file, or the directory for manifest problems
    # manifest, missing, size, sha256, format, header, samples, keys; files the manifest does
    # not account for: unlisted (shard), temp, fragment (part manifest), lock (stale), stray
    check: str
    detail: str


@dataclass
class ShardResult:
    name: str
    samples: int = 0
    keys: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class DirResult:
    path: Path
    shards: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)
    busy: str | None = None  # a writer holds the directory's lock: nothing was checked

    @property
    def ok(self) -> bool:
        return not self.problems and self.busy is None


def shard_directories(path: str | Path) -> list[Path]:
    """``path`` itself when it holds a manifest, else its sub-directories that do (so
    ``blendgen verify out/`` checks mixed/, train/ and val/)."""
    path = Path(path)
    if (path / MANIFEST).is_file() or not path.is_dir():
        return [path]
    found = sorted(p.parent for p in path.glob(f"*/{MANIFEST}"))
    return found or [path]


def check_shard(directory: Path, entry: dict, manifest: dict) -> ShardResult:
    """Every check of one listed shard; never raises for what it finds."""
    path = directory / entry["name"]
    result = ShardResult(entry["name"])

    def problem(check: str, detail: str) -> ShardResult:
        result.problems.append(Problem(str(path), check, detail))
        return result

    if not path.is_file():
        return problem("missing", "listed in the manifest but missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        problem("size", f"{size} bytes, the manifest says {entry['bytes']}")
    if sha256_file(path) != entry["sha256"]:
        problem("sha256", "the file's SHA-256 differs from the manifest's")
    try:
        verify_shard(path)
        check_against_manifest(path, entry, manifest)
    except ShardError as exc:
        return problem("format", _without_path(exc, path))
    return _check_samples(path, result, problem)


def _check_samples(path: Path, result: ShardResult, problem) -> ShardResult:
    reader = ShardReader(path)
    try:
        bad = list(reader.corrupt_samples())
        result.keys = [reader.key(i) for i in range(len(reader))]
    except ShardError as exc:  # the small fields themselves unreadable: no sample can be trusted
        return problem("samples", _without_path(exc, path))
    finally:
        reader.close()
    result.samples = len(reader)
    if bad:
        named = ", ".join(f"{e.index} ({e.key!r}: {e.what})" for e in bad[:_NAMED])
        more = f" and {len(bad) - _NAMED} more" if len(bad) > _NAMED else ""
        problem("samples", f"{len(bad)} of {len(reader)} samples corrupt: {named}{more}")
    return result


def _without_path(exc: Exception, path: Path) -> str:
    text = str(exc)
    return text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text


def _check_shard_args(args) -> ShardResult:
    return check_shard(*args)


def writer_at_work(directory: Path) -> str | None:
    """Who holds a part lock of ``directory`` (blendgen.shards.runner's ``.lock-part-I-of-N``), or None.
    A shared lock is taken and dropped at once: it fails only while a writer holds its own."""
    try:
        import fcntl
    except ImportError:  # not POSIX: writers take no locks either
        return None
    for lock in sorted(directory.glob(".lock-part-*")):
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue  # removed by its finishing holder meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            return f"being written (pid {holder} holds {lock.name}); verify it when the writer has finished"
        finally:
            os.close(fd)
    return None


_FRAGMENT = re.compile(r"manifest\.part-\d+-of-\d+\.json")
_TEMPORARY = re.compile(r"\..+\.tmp-.*")


def unaccounted_files(directory: Path, manifest: dict) -> list[Problem]:
    """A problem per file of ``directory`` that its manifest does not account for: it lists the
    shards; a part manifest is accounted for when the manifest was merged from it (each of its
    shards listed with the same checksum). Sub-folders are not looked into."""
    listed = {e["name"]: e for e in manifest["shards"]}
    problems = []
    for path in sorted(directory.iterdir()):
        name = path.name
        if name == MANIFEST or name in listed or path.is_dir():
            continue
        if _FRAGMENT.fullmatch(name):
            if merged_from(path, listed):
                continue
            kind, detail = "fragment", "a part manifest that manifest.json was not merged from (another run's?)"
        elif name.startswith("shard-") and name.endswith(".h5"):
            kind, detail = "unlisted", "a shard file the manifest does not list (a copy, or another run's)"
        elif name.startswith(".lock-part-"):
            kind, detail = "lock", "the lock of a writer that was killed; its part may be incomplete"
        elif _TEMPORARY.fullmatch(name):
            kind, detail = "temp", "a temporary file a killed writer left (never part of the data)"
        else:
            kind, detail = "stray", "a file the manifest does not account for"
        problems.append(Problem(str(path), kind, detail))
    return problems


def merged_from(fragment: Path, listed: dict[str, dict]) -> bool:
    try:
        shards = json.loads(fragment.read_text())["shards"]
        return bool(shards) and all(
            listed.get(e["name"], {}).get(k) == e[k] for e in shards for k in ("sha256", "bytes", "samples"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def verify_directory(path: str | Path, workers: int = 1, progress: bool = True) -> DirResult:
    path = Path(path)
    result = DirResult(path)
    if path.is_dir() and (busy := writer_at_work(path)):
        result.busy = busy
        return result
    try:
        manifest = load_manifest(path)
    except ShardError as exc:
        result.problems.append(Problem(str(path), "manifest", str(exc)))
        return result
    entries = manifest["shards"]
    result.shards = len(entries)
    jobs = [(path, e, manifest) for e in entries]
    bar = tqdm(total=len(jobs), unit="shard", desc=f"verifying {path}", disable=not progress)
    shard_results = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                shard_results.append(_check_shard_args(job))
                bar.update()
        else:
            ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(min(workers, len(jobs))) as pool:
                for r in pool.imap(_check_shard_args, jobs):
                    shard_results.append(r)
                    bar.update()
    finally:
        bar.close()
    seen: dict[str, str] = {}
    for r in shard_results:
        result.samples += r.samples
        result.problems += r.problems
        for key in r.keys:
            if key in seen:
                result.problems.append(Problem(str(path / r.name), "keys",
                                               f"sample key {key!r} also in {seen[key]} (keys must be unique)"))
                break
            seen[key] = r.name
    result.problems += unaccounted_files(path, manifest)
    return result


def verify(paths: list[str | Path], workers: int = 1, progress: bool = True) -> list[DirResult]:
    return [verify_directory(d, workers, progress) for p in paths for d in shard_directories(p)]


def format_results(results: list[DirResult]) -> str:
    lines = []
    for r in results:
        if r.busy:
            lines.append(f"{r.path}: not verified: {r.busy}")
            continue
        if r.ok:
            lines.append(f"{r.path}: OK ({r.shards} shards, {r.samples} samples; sizes, SHA-256, headers "
                         "and every sample checksum match)")
            continue
        lines.append(f"{r.path}: {len(r.problems)} problem(s)")
        width = max(len(Path(p.where).name) for p in r.problems)
        for p in r.problems:
            lines.append(f"  {Path(p.where).name:<{width}}  {p.check:<8}  {p.detail}")
    return "\n".join(lines)


def first_problem(result: DirResult) -> ShardError | None:
    if result.ok:
        return None
    if result.busy:
        return ShardError(f"{result.path}: {result.busy}")
    p = result.problems[0]
    return ShardError(p.detail if p.check == "manifest" else f"{p.where}: {p.check}: {p.detail}")
