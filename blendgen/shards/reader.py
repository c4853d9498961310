"""Reading one shard: random access to its samples, every sample's checksum and sizes checked on
the way (docs/format.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ..datasets.files import MAX_PIXELS, DatasetError, encoded_size, header_size
from .schema import (
    COLUMN_FIELDS, PER_SAMPLE_FIELDS, RECORD_FIELDS, CorruptSample, Sample, ShardError, ShardHeader, as_str,
    check_links, column_checksums, crc_payload, decode_record, one_line,
)


class ShardReader:
    """Random access to one shard. The h5py handle is opened lazily and re-opened after a
    fork, since HDF5 handles do not survive fork or pickling: DataLoader workers each get
    their own.

    Speed (docs/storage.md): looking a dataset up by name costs as much as reading from it
    and each h5py read has a fixed cost, so the reader keeps its dataset handles and loads the
    small per-sample fields (key, ids, δ, sizes, class sets, ...) whole on first use; a sample
    then costs three reads (image, label, phantom label) instead of fourteen reads and lookups.
    """

    def __init__(self, path: str | Path, check: bool = True):
        self.path = Path(path)
        self.check = check  # recompute each sample's checksum on read (off only to measure its cost)
        self._file: h5py.File | None = None
        self._pid = None
        self._datasets: dict | None = None  # name -> h5py.Dataset, per-sample fields
        self._columns: dict | None = None  # name -> whole column, the small fields and checksums
        self._column_crc: list[int] | None = None  # per sample: the checksum of its small fields
        try:
            with h5py.File(self.path, "r") as f:
                self.header = ShardHeader.from_attrs(f.attrs, str(self.path))
                self.num_samples = int(f.attrs["num_samples"])
                check_links(f, str(self.path))
        except OSError as exc:
            raise ShardError(f"{self.path}: not a readable HDF5 file ({one_line(exc)})") from None

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self):
        return {"path": self.path, "check": self.check, "header": self.header, "num_samples": self.num_samples}

    def __setstate__(self, state):
        self.__dict__.update(state, _file=None, _pid=None, _datasets=None, _columns=None, _column_crc=None)

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise ShardError(f"{self.path}: not a readable HDF5 file ({one_line(exc)})") from None
            self._pid = os.getpid()
            self._datasets = self._columns = self._column_crc = None  # handles of another process are stale
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._datasets = self._columns = self._column_crc = None

    def _load(self) -> None:
        f = self.file
        if self._datasets is not None:
            return
        try:
            datasets = {name: f[name] for name in PER_SAMPLE_FIELDS}
            columns = {name: f[name][:] for name in (*COLUMN_FIELDS, "checksum")}
        except OSError as exc:  # damaged chunk index or heap: the whole shard is unreadable
            raise ShardError(f"{self.path}: unreadable ({one_line(exc)})") from None
        short = [name for name, c in columns.items() if len(c) != self.num_samples]
        if short:
            raise ShardError(f"{self.path}: dataset {short[0]!r} is not of length {self.num_samples}")
        # The small fields are read from disk once per reader, so their share of each
        # sample's checksum is computed once too, here.
        self._datasets, self._columns = datasets, columns
        if self.check:
            self._column_crcs()

    def _column_crcs(self) -> list[int]:
        # The small fields are read from disk once per reader, so their share of each
        # sample's checksum is computed once too.
        if self._column_crc is None:
            columns = self._columns
            self._column_crc = column_checksums(self._columns)
        return self._column_crc

    def key(self, i: int) -> str:
        self._load()
        return as_str(self._columns["key"][i])

    def read_raw(self, i: int) -> dict:
        """The stored record of sample ``i`` (encoded bytes, no decoding), its checksum checked:
        :class:`CorruptSample` if the bytes differ from what was written."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"{self.path}: sample {i} out of range 0..{self.num_samples - 1}")
        self._load()
        try:
            record = {name: ds[i] for name, ds in self._datasets.items()}
        except OSError as exc:
            raise CorruptSample(self.path, i, self.key(i), f"unreadable: {one_line(exc)}") from None
        if self.check and crc_payload(record, self._column_crc[i]) != int(self._columns["checksum"][i]):
            raise CorruptSample(self.path, i, self.key(i))
        for name in COLUMN_FIELDS:
            value = self._columns[name][i]
            record[name] = value.copy() if isinstance(value, np.ndarray) else value  # callers may modify it
        return {name: record[name] for name in RECORD_FIELDS}

    def read(self, i: int) -> Sample:
        record = self.read_raw(i)
        problem = size_problem(record)
        if problem:  # the checksum only says the bytes are as written; these would decode to another size
            raise CorruptSample(self.path, i, self.key(i), problem)
        return decode_record(record)

    def corrupt_samples(self) -> Iterator[CorruptSample]:
        """Check every sample's checksum (reading its bytes, decoding nothing) and yield one
        :class:`CorruptSample` per damaged sample. ShardError if the shard cannot be read at all."""
        self._load()
        for i in range(self.num_samples):
            try:
                record = {name: ds[i] for name, ds in self._datasets.items()}
            except OSError as exc:
                yield CorruptSample(self.path, i, self.key(i), f"unreadable: {one_line(exc)}")
                continue
            if crc_payload(record, self._column_crcs()[i]) != int(self._columns["checksum"][i]):
                yield CorruptSample(self.path, i, self.key(i))

    def check_all(self) -> None:
        """CorruptSample for the first damaged sample, if any."""
        for problem in self.corrupt_samples():
            raise problem

    def __iter__(self):
        for i in range(self.num_samples):
            yield self.read(i)


def size_problem(r: dict) -> str | None:
    """What is wrong with a record whose encoded image or labels, by their headers, are not the
    stored ``height`` x ``width`` (or are over the pixel limit), before anything is decoded: a
    header claiming 30000x30000 would make the decoder allocate gigabytes. None when all agree."""
    want = (int(r["height"]), int(r["width"]))
    for name in ("image", "label", "phantom_label"):
        data = np.asarray(r[name], dtype=np.uint8).tobytes()
        if not data and name == "phantom_label":
            continue
        fast = encoded_size(data)  # the common case without PIL (every sample the trainer reads)
        if fast is not None and (fast[1], fast[0]) == want and fast[0] * fast[1] <= MAX_PIXELS:
            continue
        try:
            got = header_size(Path(name), MAX_PIXELS, data)
        except DatasetError as exc:
            return f"{name} header: {str(exc).removeprefix(f'{name}: ')}"
        if got != want:
            return f"{name} header says {got[1]}x{got[0]}, the record {want[1]}x{want[0]}"
    return None

