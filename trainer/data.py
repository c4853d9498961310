"""Streaming batches from a blendgen shard directory, split across DDP ranks and loader workers.

    dataset = ShardStream(ShardDir.open("out/mixed"), train_transform(321), batch_size=8,
                          shuffle=True, drop_last=True, seed=0, rank=0, world_size=1)
    loader = make_loader(dataset, workers=2, pin_memory=False)
    dataset.set_epoch(3, skip_batches=10)   # before iter(loader): resume inside epoch 3
    for batch in loader: ...                # {"image" (B,3,H,W) uint8, "label", "phantom", "delta", "key"}

How one epoch is laid out (all of it a pure function of (seed, epoch), so any position can be
rebuilt on resume):

1. **Units.** Every shard is cut into ranges of ``unit`` consecutive samples, the (shard,
   sample-range) units; shuffling permutes the units with ``default_rng([seed, epoch])``.
   A directory with fewer shards than ranks x workers still splits evenly, because the split
   below is by samples, not by shards. The default unit is **one sample**, so the epoch order
   is a seeded uniform permutation of every sample of the directory: ``blendgen mix`` writes
   a dominant image's blends in runs of consecutive samples (19 on the demo, ~28 at VOC-aug
   scale), and units of 32 seen through a 256-sample buffer put several blends of one
   dominant into most batches (demo: 160 distinct dominants in the first 240 batches of 8
   where a uniform shuffle gives 393; docs/performance.md). The price, random instead of
   sequential reads within the shards, is ~1-2% of the loader's samples/s (measured there
   too). Larger units (``TrainConfig.unit``, e.g. 32 in runs recorded before it became 1)
   read sequentially inside a unit and keep the old order exactly.
2. **Ranks.** The concatenated unit order is cut into one contiguous slice per rank. Training
   (``drop_last=True``) gives every rank the same number of full batches, dropping the
   ``< world_size * batch_size`` samples at the end of the epoch's order (different ones each
   epoch): DDP needs every rank to take the same number of steps, or the all-reduce of the last
   step waits forever. Evaluation (``drop_last=False``) keeps every sample exactly once; ranks
   then differ by at most one sample, which is fine since evaluation syncs only once, at the end.
3. **Workers.** A rank's batches j = 0, 1, ... are dealt round-robin to ``num_workers`` parts:
   part ``j % num_workers`` makes batch j, from its own contiguous piece of the rank's slice.
   The DataLoader hands batches back in exactly that round-robin order, so the rank's batch
   sequence is deterministic.
4. **Shuffle buffer.** Each worker streams its part through a bounded shuffle buffer
   (``shuffle_buffer`` entries, ``default_rng([seed, epoch, rank, part])``) before batching.
   The buffer holds sample *addresses* (shard, index), and a sample is read when it leaves the
   buffer: the order is that of a buffer of decoded samples, reads stay within a window of
   ``shuffle_buffer`` samples of the sequential stream, memory is a few bytes per entry, and
   skipping k batches on resume costs no reading at all. With units of one sample the order
   is already uniform and the buffer changes nothing of its statistics.
5. **Samples.** Each sample's augmentation draws from ``default_rng([seed, epoch, shard,
   index])``: it does not depend on which worker or rank reads it, or on what was skipped.

Batching happens in the workers (the DataLoader runs with ``batch_size=None``), so a batch
crosses the process boundary once, as a few large tensors. Each worker opens its own h5py
handles lazily (:class:`blendgen.shards.reader.ShardReader`); ``num_workers=0`` works the same in the
main process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from blendgen.shards.directory import ShardDir
from blendgen.shards.schema import CorruptSample, ShardError

from .transforms import collate, to_sample

# -- the epoch's layout (pure functions) --------------------------------------------------------


def make_units(shard_sizes: list[int], unit: int) -> np.ndarray:
    """(U, 3) int64 rows (shard, start, stop): every shard cut into ranges of ``unit`` samples."""
    sizes = np.asarray(shard_sizes, dtype=np.int64).reshape(-1)
    counts = -(-sizes // unit)  # units per shard
    shard = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
    first = np.cumsum(counts) - counts  # each shard's first unit
    start = (np.arange(len(shard), dtype=np.int64) - np.repeat(first, counts)) * unit
    stop = np.minimum(start + unit, np.repeat(sizes, counts))
    return np.stack([shard, start, stop], axis=1).reshape(-1, 3)


def epoch_addresses(units: np.ndarray, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """(N, 2) int64 rows (shard, index): the epoch's sample order before the shuffle buffer."""
    if shuffle:
        units = units[np.random.default_rng([seed, epoch]).permutation(len(units))]
    lengths = units[:, 2] - units[:, 1]
    shard = np.repeat(units[:, 0], lengths)
    # index = the unit's start + the position inside the unit, without one arange per unit
    offset = np.repeat(units[:, 1] - (np.cumsum(lengths) - lengths), lengths)
    index = np.arange(len(shard), dtype=np.int64) + offset
    return np.stack([shard, index], axis=1).reshape(-1, 2)


@dataclass(frozen=True)
class Part:
    """One worker's share of one rank's epoch: samples [start, stop) of the epoch order,
    made into ``num_batches`` batches that are the rank's batches worker, worker + nw, ..."""

    start: int
    stop: int
    num_batches: int


def rank_span(num_samples: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> tuple[int, int]:
    """Samples [start, stop) of the epoch order that ``rank`` consumes (step 2 above)."""
    if drop_last:
        per_rank = num_samples // (world_size * batch_size) * batch_size
        return rank * per_rank, (rank + 1) * per_rank
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def worker_part(span: tuple[int, int], batch_size: int, worker: int, num_workers: int) -> Part:
    """Worker ``worker``'s contiguous share of a rank's span (step 3 above). Every batch is full
    but possibly one: the last batch of the last worker holding samples (evaluation only)."""
    start, stop = span
    n = stop - start
    num_batches = -(-n // batch_size)
    q, r = divmod(num_batches, num_workers)
    counts = [q + (w < r) for w in range(num_workers)]  # batches per worker
    begin = min(start + batch_size * sum(counts[:worker]), stop)
    end = min(begin + batch_size * counts[worker], stop)
    return Part(begin, end, counts[worker])


def skipped_by_worker(skip_batches: int, worker: int, num_workers: int) -> int:
    """How many of the rank's first ``skip_batches`` batches worker ``worker`` makes."""
    return max(0, -(-(skip_batches - worker) // num_workers))


# -- iterator stages ----------------------------------------------------------------------------


def shuffle_buffer(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Yield ``items`` in a random order using at most ``size`` items of look-ahead."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


def batched(items: Iterable, n: int) -> Iterator[list]:
    """Consecutive lists of ``n`` items; the last one may be shorter."""
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def part_batches(units: np.ndarray, span: tuple[int, int], batch_size: int, role: int, num_workers: int, *,
                 shuffle: bool, seed: int, epoch: int, rank: int, buffer: int) -> Iterator[list[tuple[int, int]]]:
    """The address batches that part ``role`` of a rank's ``span`` makes (steps 1-4 above):
    lists of (shard, index), nothing read. :class:`ShardStream` loads exactly these."""
    part = worker_part(span, batch_size, role, num_workers)
    addresses = epoch_addresses(units, shuffle, seed, epoch)[part.start:part.stop]
    stream: Iterable = map(tuple, addresses.tolist())
    if shuffle:
        stream = shuffle_buffer(stream, buffer, np.random.default_rng([seed, epoch, rank, role]))
    return batched(stream, batch_size)


def rank_batches(shard_sizes: list[int], batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 1,
                 unit: int = 1, buffer: int = 256) -> Iterator[list[tuple[int, int]]]:
    """One rank's address batches of an epoch in the order the DataLoader hands them back
    (round-robin over the workers' parts), from the shard sizes alone: what training sees,
    for measuring an order (bench/bench_order.py) without reading a file."""
    units = make_units(shard_sizes, unit)
    span = rank_span(int(np.sum(shard_sizes, dtype=np.int64)), batch_size, rank, world_size, drop_last)
    parts = [part_batches(units, span, batch_size, w, num_workers, shuffle=shuffle, seed=seed, epoch=epoch,
                          rank=rank, buffer=buffer) for w in range(num_workers)]
    while parts:
        for it in list(parts):
            batch = next(it, None)
            if batch is None:
                parts.remove(it)  # counts differ by at most one, earlier parts hold the extra
            else:
                yield batch


# -- the dataset ----------------------------------------------------------------------------------


ON_CORRUPT = ("stop", "skip")


class ShardStream(IterableDataset):
    """Batches of one rank's share of a shard directory, one epoch per ``iter()``.

    A sample whose checksum fails (:class:`blendgen.shards.CorruptSample`) is left out of its
    batch and named in the batch's ``corrupt`` list; :class:`ShardLoader` then stops with that
    one line (``on_corrupt="stop"``) or counts it (``"skip"``). The error is carried, not raised,
    because a DataLoader worker's exception reaches the user as a multi-line traceback."""

    def __init__(self, shards: ShardDir, transform: Callable, batch_size: int, *, shuffle: bool,
                 drop_last: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 256, unit: int = 1, collate_fn: Callable = collate,
                 on_corrupt: str = "stop") -> None:
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt: expected one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.on_corrupt = on_corrupt
        if batch_size < 1 or unit < 1 or shuffle_buffer < 1:
            raise ValueError(f"batch_size, unit, shuffle_buffer: expected >= 1, got {batch_size}, {unit}, {shuffle_buffer}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < {world_size}, got {rank}")
        self.path = shards.path
        self.readers = shards.readers()
        self.units = make_units([len(r) for r in self.readers], unit)
        self.num_samples = sum(len(r) for r in self.readers)
        self.transform, self.collate_fn = transform, collate_fn
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.buffer = seed, rank, world_size, shuffle_buffer
        self.span = rank_span(self.num_samples, batch_size, rank, world_size, drop_last)
        if drop_last and self.span[1] == self.span[0]:
            raise ValueError(f"{self.path}: {self.num_samples} samples do not fill one batch of "
                             f"{batch_size} on each of {world_size} processes")
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch the next ``iter()`` yields, starting after its first ``skip_batches``
        batches (resume). Call it before ``iter(loader)``: workers copy the dataset then."""
        if not 0 <= skip_batches <= len(self):
            raise ValueError(f"skip_batches: expected 0..{len(self)}, got {skip_batches}")
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self) -> int:
        """Batches this rank takes per epoch."""
        return -(-(self.span[1] - self.span[0]) // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        # The DataLoader asks worker 0 first; after skipping k batches the next one is made by
        # part k % nw, so worker w plays part (w + k) % nw and round-robin order is kept.
        role = (worker + self.skip) % num_workers
        batches = part_batches(self.units, self.span, self.batch_size, role, num_workers, shuffle=self.shuffle,
                               seed=self.seed, epoch=self.epoch, rank=self.rank, buffer=self.buffer)
        for batch in islice(batches, skipped_by_worker(self.skip, role, num_workers), None):
            yield self.make_batch(batch)

    def make_batch(self, addresses: list[tuple[int, int]]) -> dict:
        """The collated batch of the readable samples, with ``corrupt``: the damaged ones' messages."""
        samples, corrupt = [], []
        for shard, index in addresses:
            try:
                samples.append(self.load(shard, index))
            except CorruptSample as exc:
                corrupt.append(str(exc))
                if self.on_corrupt == "stop":
                    break
            except ShardError as exc:  # a whole shard unreadable: not a sample to skip
                return {"corrupt": [], "fatal": str(exc)}
        batch = self.collate_fn(samples) if samples and not (corrupt and self.on_corrupt == "stop") else {}
        batch["corrupt"] = corrupt
        return batch

    def load(self, shard: int, index: int) -> dict:
        """Read, augment and tensorise one sample (image (3,H,W) uint8, label/phantom (H,W) int64)."""
        rng = np.random.default_rng([self.seed, self.epoch, shard, index])
        return to_sample(self.readers[shard].read(index), self.transform, rng)


# Corrupt samples skipped by every ShardLoader of this process since the last take_skipped(),
# each once however often it was met (a val sample is met at every evaluation): message -> None.
_SKIPPED: dict[str, None] = {}


def take_skipped() -> list[str]:
    """The distinct corrupt samples skipped so far in this process (and forget them)."""
    taken = list(_SKIPPED)
    _SKIPPED.clear()
    return taken


class ShardLoader(DataLoader):
    """A DataLoader of :class:`ShardStream` batches that acts on corrupt samples in the main
    process: ShardError with the first one's message (stop), or drop and count them (skip)."""

    def __iter__(self):
        for batch in super().__iter__():
            if "fatal" in batch:
                raise ShardError(batch["fatal"])
            corrupt = batch.pop("corrupt", [])
            if corrupt:
                if self.dataset.on_corrupt == "stop":
                    raise ShardError(corrupt[0])
                _SKIPPED.update(dict.fromkeys(corrupt))
                if "image" not in batch:
                    if not self.dataset.drop_last:
                        continue  # evaluation: nothing of this batch to count; ranks sync only at the end
                    # training: every rank must take the step (DDP), and there is nothing to step on
                    raise ShardError(f"every sample of a training batch is corrupt (first: {corrupt[0]})")
            yield batch


def make_loader(dataset: ShardStream, workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over prebatched ``dataset``. Its own torch.Generator keeps the loader from
    drawing on the global torch RNG (dropout's), so a resumed run draws the same dropout masks.

    OpenCV is set to one thread here, in the parent, before any worker is forked: the workers
    are the data parallelism, and OpenCV's thread pool does not survive fork() (a child that
    reconfigures an inherited pool waits forever on the parent's threads)."""
    cv2.setNumThreads(1)
    return ShardLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(dataset.seed),
                      prefetch_factor=4 if workers else None, persistent_workers=False)


def label_pixel_counts(shards: ShardDir, num_classes: int, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Over every sample's (dominant) label map: (pixels of each class, pixels of the images
    that hold each class), both (num_classes,) int64, for ``--class-weights median-freq``. Reads
    and decodes only the labels, once, in the training process."""
    from blendgen.shards.schema import decode_label

    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for reader in shards.readers():
        for i in range(len(reader)):
            label = decode_label(reader.read_raw(i)["label"])
            counts = np.bincount(label[label != ignore_index].ravel(), minlength=num_classes)[:num_classes]
            pixels += counts
            image_pixels += np.where(counts > 0, int(counts.sum()), 0)
    return pixels, image_pixels
