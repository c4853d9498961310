"""Write an ordered list of samples into a shard directory: shards, parts, workers, resume.

``mix`` and ``pack`` each describe their output as a :class:`SampleSource`, a fixed ordered
list of samples that can produce any contiguous range of them; this module does the rest,
the same way for both.

Shard ``s`` holds rows ``[s·S, (s+1)·S)`` of the source (S = ``shard_size``), so what a shard
holds depends on the source and S alone, never on who writes it. Part ``i`` of ``n``
(``--part i/n``, 1-based) writes the shards with ``s mod n == i − 1``: round robin keeps the
parts within one shard of each other in size. ``--workers`` processes share a part's shards.
Hence any split into parts and workers writes the same files as one process.

Each part writes ``manifest.part-I-of-N.json`` listing its shards; whichever part finishes
last (it sees all fragments) merges them into ``manifest.json``. Parts on machines without a
shared disk: copy the shards and fragments into one directory and run ``--merge``.

A rerun after a crash or kill keeps every shard that exists and is exactly the one it would
write (header, generation parameters and sample keys checked) and intact (every sample's
checksum, and the SHA-256 an earlier manifest recorded), rewrites damaged ones, removes
temporary files a killed writer left behind, and writes the rest: the result equals an
uninterrupted run. A shard from a different run is an error, never silently replaced. A lock
file per part (``.lock-part-I-of-N``) makes a second writer of the same part refuse to start.
"""

from __future__ import annotations

import errno
import json
import math
import multiprocessing as mp
import queue
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import cv2
from tqdm import tqdm

from ..io import exclusive_lock, make_dir, write_json
from .manifest import (
    MANIFEST, check_complete_shard, manifest_dict, merge_manifests, merge_part_manifests, part_manifest_name,
    shard_name, temp_paths,
)
from .reader import ShardReader
from .schema import JPEG_CHROMA, ShardError, ShardHeader, verify_shard
from .writer import ShardWriter


class SampleSource(Protocol):
    """An ordered list of samples with the header they are written under."""

    header: ShardHeader

    def __len__(self) -> int: ...

    def keys(self, start: int, stop: int) -> list[str]:
        """Keys of samples ``start..stop-1``, without reading any image."""

    def records(self, start: int, stop: int) -> Iterator[dict]:
        """Samples ``start..stop-1`` in order, encoded for :meth:`ShardWriter.write`
        (normally ``encode_sample(sample, header)``)."""


# -- options ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` (1-based), from ``--part i/n``."""

    index: int = 1
    count: int = 1

    def __post_init__(self):
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise ValueError(f"part: expected I/N with 1 <= I <= N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> "Part":
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ValueError(f"part: expected I/N such as 1/4, got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def shards(self, num_shards: int) -> list[int]:
        return list(range(self.index - 1, num_shards, self.count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class WriteOptions:
    """How a shard directory is written; shared by ``mix`` and ``pack``."""

    shard_size: int = 1000
    workers: int = 1
    part: Part = Part()
    image_quality: int = 95  # JPEG; see docs/storage.md
    image_chroma: str = "420"

    def __post_init__(self):
        if isinstance(self.part, str):
            object.__setattr__(self, "part", Part.parse(self.part))
        if self.shard_size < 1:
            raise ValueError(f"shard_size: must be >= 1, got {self.shard_size}")
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")
        if not 1 <= self.image_quality <= 100:
            raise ValueError(f"image_quality: expected 1..100, got {self.image_quality}")
        if self.image_chroma not in JPEG_CHROMA:
            raise ValueError(f"image_chroma: expected one of {sorted(JPEG_CHROMA)}, got {self.image_chroma!r}")


@dataclass
class RunResult:
    directory: Path
    part: Part
    shards: int  # shards of this part
    written: int  # ... written by this run
    kept: int  # ... found complete from an earlier run
    samples: int  # samples in this part's shards
    bytes: int
    manifest: dict | None  # the merged manifest, once every part has finished
    waiting_for: list[int]  # parts whose fragment is still missing


# -- one shard ----------------------------------------------------------------------------------
def shard_rows(shard: int, shard_size: int, num_rows: int) -> range:
    return range(shard * shard_size, min((shard + 1) * shard_size, num_rows))


def write_shard(source: SampleSource, directory: Path, shard: int, shard_size: int,
                on_sample: Callable[[], None] = lambda: None) -> dict:
    """Write shard ``shard`` of ``source``; return its manifest entry. A failed write leaves
    nothing behind (:class:`ShardWriter` removes its temporary file) and raises one line."""
    rows = shard_rows(shard, shard_size, len(source))
    path = directory / shard_name(shard)
    try:
        with ShardWriter(path, source.header) as writer:
            for record in source.records(rows.start, rows.stop):
                writer.write(record)
                on_sample()
    except OSError as exc:  # reading errors arrive as DatasetError, so this is the output side
        raise ShardError(f"{path}: {describe_write_error(exc)}") from None
    except RuntimeError as exc:  # h5py reports some failed flushes (a full disk) as RuntimeError
        if not hdf5_write_failure(exc):
            raise
        raise ShardError(f"{path}: {describe_write_error(exc)}") from None
    return writer.info


def hdf5_write_failure(exc: RuntimeError) -> bool:
    text = str(exc)
    return "errno = " in text or "flush" in text.lower() or "No space left" in text


def describe_write_error(exc: OSError | RuntimeError) -> str:
    # HDF5 reports a full disk inside its message ("errno = 28") and leaves errno unset.
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) or "errno = 28" in str(exc):
        return "no space left on device while writing this shard (it was removed; free space and rerun to resume)"
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())  # one line, whatever the library wrote
    return f"cannot write ({text})"


# -- worker processes ---------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(source: SampleSource, directory: Path, shard_size: int, ticks) -> None:
    cv2.setNumThreads(1)  # one core per worker process; the pool is the parallelism
    _WORKER.update(source=source, directory=directory, shard_size=shard_size, ticks=ticks)


def _worker_write_shard(shard: int) -> tuple[int, dict]:
    pending = 0

    def tick():
        nonlocal pending
        pending += 1
        if pending == 8:  # batch the progress messages
            _WORKER["ticks"].put(pending)
            pending = 0

    info = write_shard(_WORKER["source"], _WORKER["directory"], shard, _WORKER["shard_size"], tick)
    _WORKER["ticks"].put(pending)
    return shard, info


def _write_in_pool(source, directory, todo, shard_size, workers, bar) -> dict[int, dict]:
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    ticks = ctx.Queue()
    infos = {}
    with ctx.Pool(min(workers, len(todo)), initializer=_init_worker,
                  initargs=(source, directory, shard_size, ticks)) as pool:
        pending = [pool.apply_async(_worker_write_shard, (s,)) for s in todo]
        while pending:
            try:
                bar.update(ticks.get(timeout=0.1))
            except queue.Empty:
                pass
            for result in [r for r in pending if r.ready()]:
                pending.remove(result)
                shard, info = result.get()  # re-raises a worker's error here
                infos[shard] = info
    return infos


# -- a directory --------------------------------------------------------------------------------
def write_shards(source: SampleSource, directory: str | Path, options: WriteOptions,
                 cooccurrence=None, extra: dict | None = None, progress: bool = True,
                 desc: str = "writing") -> RunResult:
    """Write this part's shards of ``source`` into ``directory`` (resuming), then its manifest
    fragment, then ``manifest.json`` if every part is done. See the module docstring. A second
    writer of the same part of the same directory refuses to start."""
    directory = make_dir(directory)
    num_shards = math.ceil(len(source) / options.shard_size)
    if num_shards == 0:
        raise ValueError("nothing to write: no samples")
    part = options.part
    with exclusive_lock(directory / lock_name(part), f"{directory} (part {part})"):
        return _write_part(source, directory, options, num_shards, cooccurrence, extra, progress, desc)


def lock_name(part: Part) -> str:
    return f".lock-part-{part.index}-of-{part.count}"


def _write_part(source: SampleSource, directory: Path, options: WriteOptions, num_shards: int,
                cooccurrence, extra: dict | None, progress: bool, desc: str) -> RunResult:
    part = options.part
    mine = part.shards(num_shards)
    for s in mine:  # left by a killed run; this part alone writes these shards
        for tmp in temp_paths(directory, shard_name(s)):
            tmp.unlink(missing_ok=True)

    listed = listed_entries(directory, part)
    infos, todo, damaged = {}, [], 0
    for s in mine:
        path = directory / shard_name(s)
        if path.exists():
            rows = shard_rows(s, options.shard_size, len(source))
            info = kept_shard(path, source.header, source.keys(rows.start, rows.stop), listed.get(path.name))
            if info is None:
                damaged += 1
                path.unlink()
                todo.append(s)
            else:
                infos[s] = info
        else:
            todo.append(s)
    if (infos or damaged) and progress:
        tqdm.write(f"{directory}: {len(infos)} of {len(mine)} shards already complete and intact"
                   f"{f', {damaged} damaged (rewriting them)' if damaged else ''}, resuming")

    total = sum(len(shard_rows(s, options.shard_size, len(source))) for s in todo)
    bar = tqdm(total=total, unit="sample", desc=desc, disable=not progress or not todo, smoothing=0.05)
    try:
        if options.workers == 1 or len(todo) <= 1:
            for s in todo:
                infos[s] = write_shard(source, directory, s, options.shard_size, lambda: bar.update())
        else:
            infos.update(_write_in_pool(source, directory, todo, options.shard_size, options.workers, bar))
    except BaseException:
        for s in todo:  # workers stopped mid-shard by the pool's shutdown cannot clean up
            for tmp in temp_paths(directory, shard_name(s)):
                tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()

    fragment = manifest_dict(source.header, [infos[s] for s in mine], cooccurrence, extra)
    fragment["part"] = {"index": part.index, "count": part.count, "num_shards": num_shards}
    manifest, waiting = None, []
    if part.count == 1:
        manifest = merge_manifests([fragment], str(directory))
        write_json(directory / MANIFEST, manifest)
    else:
        write_json(directory / part_manifest_name(part.index, part.count), fragment)
        waiting = missing_parts(directory, part.count)
        if not waiting:
            manifest = merge_part_manifests(directory, part.count)
    return RunResult(directory=directory, part=part, shards=len(mine), written=len(todo),
                     kept=len(mine) - len(todo), samples=sum(i["samples"] for i in infos.values()),
                     bytes=sum(i["bytes"] for i in infos.values()), manifest=manifest, waiting_for=waiting)


def listed_entries(directory: Path, part: Part) -> dict[str, dict]:
    """Shard name -> entry in the manifests an earlier run wrote (``manifest.json`` and this
    part's fragment); unreadable ones count as absent, since they are rewritten anyway."""
    entries = {}
    for name in (MANIFEST, part_manifest_name(part.index, part.count)):
        try:
            shards = json.loads((directory / name).read_text()).get("shards", [])
            entries.update({e["name"]: e for e in shards if isinstance(e, dict) and isinstance(e.get("name"), str)})
        except (OSError, ValueError, AttributeError):
            continue
    return entries


def kept_shard(path: Path, header: ShardHeader, keys: list[str], listed: dict | None) -> dict | None:
    """The manifest entry of an existing shard this run would write, once it is shown intact:
    readable, every sample's checksum right, and the SHA-256 an earlier manifest recorded for
    it (if any) unchanged. None when it is damaged, to be rewritten; ShardError when it is
    another run's shard (other parameters or samples), which is never silently replaced."""
    try:
        verify_shard(path)
    except ShardError:
        return None  # not even readable: damaged, whatever wrote it
    info = check_complete_shard(path, header, keys)
    reader = ShardReader(path)
    try:
        if next(reader.corrupt_samples(), None) is not None:
            return None
    except ShardError:
        return None
    finally:
        reader.close()
    if listed is not None and listed.get("sha256") not in (None, info["sha256"]):
        return None
    return info


def missing_parts(directory: Path, count: int) -> list[int]:
    return [i for i in range(1, count + 1) if not (directory / part_manifest_name(i, count)).is_file()]


def merge_parts(directory: str | Path) -> dict:
    """``--merge``: combine the fragments found in ``directory`` into ``manifest.json``."""
    directory = Path(directory)
    counts = {int(m.group(1)) for p in directory.glob("manifest.part-*-of-*.json")
              if (m := re.fullmatch(r"manifest\.part-\d+-of-(\d+)\.json", p.name))}
    if not counts:
        raise ShardError(f"{directory}: no manifest.part-I-of-N.json fragments to merge")
    if len(counts) > 1:
        raise ShardError(f"{directory}: fragments of runs split differently ({', '.join(f'of-{c}' for c in sorted(counts))}); "
                         "remove the stale ones")
    count = counts.pop()
    manifest = merge_part_manifests(directory, count)
    # manifest.json now says all they said; copied in from other machines, they are clutter.
    # The part that finishes last merges without removing them (each part then still has its
    # own record); verify accepts a fragment whose shards the manifest lists unchanged.
    for i in range(1, count + 1):
        (directory / part_manifest_name(i, count)).unlink(missing_ok=True)
    return manifest
