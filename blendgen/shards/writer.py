"""Writing one shard: ``with ShardWriter(path, header) as w: w.write(record)``; nothing half-written
is ever visible under the shard's name (docs/format.md)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np

from .schema import DESCRIPTIONS, RECORD_FIELDS, SCHEMA, VLEN_U8, ShardHeader, record_checksum, verify_shard


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


class ShardWriter:
    """Write one shard: ``with ShardWriter(path, header) as w: w.write(record)``.

    ``record`` holds encoded fields (see :func:`encode_sample`). Records are buffered and
    appended in blocks to an HDF5 file held in memory; on a clean exit its bytes are written to
    a temporary file with plain Python I/O, re-opened and checked, then renamed to ``path``; on
    an error the temporary file is deleted. ``info`` then holds the manifest entry.

    Why in memory: HDF5 writing to a full disk fails at every later handle release and h5py
    prints each failure as an ignored exception, dozens of tracebacks for one full disk; a plain
    ``write`` fails once, as an OSError. The cost is the shard's bytes in memory while it is
    written (``--shard-size`` times the sample size; docs/storage.md).
    """

    def __init__(self, path: str | Path, header: ShardHeader, block: int = 64, in_memory: bool = True):
        self.path = Path(path)
        self.header = header
        self.block = block
        self.in_memory = in_memory  # False: HDF5 writes the temporary file itself (bench_integrity compares)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._buffer: list[dict] = []
        self._count = 0
        self._file: h5py.File | None = None
        self.info: dict | None = None

    def __enter__(self) -> "ShardWriter":
        memory = {"driver": "core", "backing_store": False} if self.in_memory else {}
        self._file = h5py.File(self.tmp, "w", libver=("earliest", "v110"), **memory)
        for k, v in self.header.attrs().items():
            self._file.attrs[k] = v
        for name, (dtype, shape) in SCHEMA.items():
            # track_times=False: no timestamps, so a fixed seed gives byte-identical shards.
            ds = self._file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                           chunks=(self.block, *shape), track_times=False)
            ds.attrs["description"] = DESCRIPTIONS[name]
        return self

    def write(self, record: dict) -> None:
        missing = set(RECORD_FIELDS) - record.keys()
        extra = record.keys() - set(RECORD_FIELDS)
        if missing or extra:
            raise ValueError(f"record {record.get('key')!r}: missing fields {sorted(missing)}, unknown {sorted(extra)}")
        self._buffer.append({**record, "checksum": record_checksum(record)})
        if len(self._buffer) >= self.block:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        n0, n = self._count, len(self._buffer)
        for name, (dtype, shape) in SCHEMA.items():
            ds = self._file[name]
            ds.resize(n0 + n, axis=0)
            if dtype is VLEN_U8:
                # One block write is 2.4x faster than element writes and stores the same bytes,
                # but h5py turns a block of equal-length arrays into a 2-D array, which a 1-D
                # vlen dataset refuses when the length is 0: such blocks go element by element.
                arrays = [np.asarray(r[name], dtype=np.uint8) for r in self._buffer]
                if len({len(a) for a in arrays}) > 1:
                    block = np.empty(n, dtype=object)
                    for j, a in enumerate(arrays):
                        block[j] = a
                    ds[n0:n0 + n] = block
                else:
                    for j, a in enumerate(arrays):
                        ds[n0 + j] = a
            else:
                ds[n0:n0 + n] = np.array([r[name] for r in self._buffer], dtype=dtype)
        self._count += n
        self._buffer.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
                self._file.attrs["num_samples"] = self._count
                if self.in_memory:
                    self._file.flush()
                    image = self._file.id.get_file_image()
                    self._file.close()
                    with open(self.tmp, "wb") as out:
                        out.write(image)
                else:
                    self._file.close()
                verify_shard(self.tmp, expected=self._count)
                digest = sha256_file(self.tmp)
                os.replace(self.tmp, self.path)
                self.info = {"name": self.path.name, "samples": self._count, "sha256": digest,
                             "bytes": self.path.stat().st_size}
        finally:
            if self._file.id.valid:
                self._file.close()
            if self.tmp.exists():
                self.tmp.unlink()

