"""The on-disk contract between ``blendgen`` and ``trainer``: HDF5 shards in a directory.

This module alone owns the format. A shard directory (``out/mixed``, ``out/train``,
``out/val``) holds ``shard-NNNNN.h5`` files and a ``manifest.json`` that lists them with their
sample counts and SHA-256 checksums, plus everything a reader needs without the source
dataset: class names, palette, ignore index, background ids, the co-occurrence matrix, the
generation parameters (strategy, delta spec, seed) and the source dataset description.

Each shard (format ``blendgen-shards``, version 2) carries the same description in its root
attributes, so one shard alone is self-describing to ``h5ls -r`` / ``h5dump -A``, and one
dataset per field, all of length ``num_samples`` (see :data:`SCHEMA`):

``image``            vlen uint8  the (blended) RGB image, encoded (attribute ``image_codec``);
                                 ``pack`` stores source JPEGs byte for byte
``label``            vlen uint8  dominant label map G_a, PNG (lossless, uint8 ids, 255 ignore)
``phantom_label``    vlen uint8  phantom label map G_b, PNG; empty for standard samples
``delta``            float32     blend weight of the dominant (1.0 for standard samples)
``key``              str         stable sample key, unique within the directory
``dominant_id``      str         source image id of the dominant
``phantom_id``       str         source image id of the phantom ("" for standard samples)
``height``/``width`` int32       image size, known without decoding
``dominant_classes`` vlen uint8  object class ids present in G_a
``phantom_classes``  vlen uint8  object class ids present in G_b
``pair``             int16 (2,)  (dominant cluster, phantom cluster) matrix indices, -1 if none
``instances``        int16       object instances in the source annotation (-1 unknown)
``occluded``         vlen uint8  per-object VOC ``occluded`` flags (empty if unknown)
``checksum``         uint32      CRC-32 of the sample's stored bytes, every field above
                                 (:func:`record_checksum`), checked on every read

Integrity: every read of a sample recomputes its checksum (a mismatch is a
:class:`CorruptSample` naming shard, index and key), the manifest holds each shard's SHA-256,
opening a directory checks each shard's header against the manifest and accepts only plain
file names of that directory, and shards with external links, external storage or virtual
datasets are refused (they would read bytes from other files).

Shards are written under a temporary name, re-opened and verified, then renamed: a file
named ``shard-*.h5`` is always complete. A directory written in parts (``--part i/n``) also
holds ``manifest.part-I-of-N.json`` fragments, merged into ``manifest.json`` when all are
present. docs/storage.md has the measurements behind the codecs and the layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import h5py
import numpy as np

from . import __version__
from .datasets.classes import ClassSet

FORMAT = "blendgen-shards"
FORMAT_VERSION = 2  # 2: per-sample checksums
MANIFEST = "manifest.json"
IMAGE_CODECS = ("jpeg", "png", "webp")
# JPEG chroma subsampling: "420" halves colour resolution both ways (what VOC's own JPEGs use),
# "444" keeps it. docs/storage.md has the measurements behind the default.
JPEG_CHROMA = {"420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}

_VLEN_U8 = h5py.vlen_dtype(np.uint8)
_STR = h5py.string_dtype("utf-8")

# name -> (dtype, per-sample shape). The writer validates every record against it.
SCHEMA: dict[str, tuple[object, tuple[int, ...]]] = {
    "image": (_VLEN_U8, ()),
    "label": (_VLEN_U8, ()),
    "phantom_label": (_VLEN_U8, ()),
    "delta": (np.float32, ()),
    "key": (_STR, ()),
    "dominant_id": (_STR, ()),
    "phantom_id": (_STR, ()),
    "height": (np.int32, ()),
    "width": (np.int32, ()),
    "dominant_classes": (_VLEN_U8, ()),
    "phantom_classes": (_VLEN_U8, ()),
    "pair": (np.int16, (2,)),
    "instances": (np.int16, ()),
    "occluded": (_VLEN_U8, ()),
    "checksum": (np.uint32, ()),
}
# What a writer is given and a reader returns: every field but the checksum, which the writer
# computes and the reader checks.
RECORD_FIELDS: tuple[str, ...] = tuple(name for name in SCHEMA if name != "checksum")

# name -> meaning, stored as each dataset's ``description`` attribute so ``h5ls -v`` and
# ``h5dump -A`` explain a shard without this code. Informational only: readers ignore it.
DESCRIPTIONS: dict[str, str] = {
    "image": "blended RGB image I_ss = delta*I_a + (1-delta)*I_b, encoded bytes (root attr image_codec)",
    "label": "dominant label map G_a, grayscale PNG bytes, uint8 class ids, 255 = ignore",
    "phantom_label": "phantom label map G_b, grayscale PNG bytes; empty for standard samples",
    "delta": "blend weight of the dominant image (1.0 for standard samples)",
    "key": "stable sample key, unique within the shard directory",
    "dominant_id": "source dataset image id of the dominant I_a",
    "phantom_id": "source dataset image id of the phantom I_b ('' for standard samples)",
    "height": "image height in pixels",
    "width": "image width in pixels",
    "dominant_classes": "object class ids (label values) present in G_a",
    "phantom_classes": "object class ids (label values) present in G_b",
    "pair": "(dominant cluster, phantom cluster) co-occurrence matrix indices, -1 if none",
    "instances": "object instances in the source annotation (-1 unknown)",
    "occluded": "per-object VOC occluded flags (empty if unknown)",
    "checksum": "CRC-32 of the sample's stored bytes, all other fields in schema order, each as "
                "a 4-byte little-endian length then its bytes (strings UTF-8, numbers little-endian)",
}


class ShardError(ValueError):
    """A shard or shard directory that is missing, corrupt or of another format."""


class CorruptSample(ShardError):
    """One sample whose stored bytes do not match its checksum (or cannot be read at all)."""

    def __init__(self, path: Path, index: int, key: str, what: str = "checksum mismatch"):
        self.path, self.index, self.key, self.what = Path(path), index, key, what
        super().__init__(f"{path}: sample {index} (key {key!r}) is corrupt ({what}); "
                         f"`blendgen verify {Path(path).parent}` lists every damaged sample")

    def __reduce__(self):  # DataLoader workers pickle the errors they report
        return CorruptSample, (self.path, self.index, self.key, self.what)


# -- codecs -----------------------------------------------------------------------------------
def encode_image(rgb: np.ndarray, codec: str = "jpeg", quality: int = 95, chroma: str = "420") -> np.ndarray:
    """(H, W, 3) uint8 RGB -> encoded bytes as a uint8 array. ``chroma`` applies to JPEG only."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if codec == "jpeg":
        if chroma not in JPEG_CHROMA:
            raise ValueError(f"image chroma: expected one of {sorted(JPEG_CHROMA)}, got {chroma!r}")
        params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, JPEG_CHROMA[chroma]]
    elif codec == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    elif codec == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    else:
        raise ValueError(f"image codec: expected one of {IMAGE_CODECS}, got {codec!r}")
    ok, buf = cv2.imencode({"jpeg": ".jpg", "webp": ".webp", "png": ".png"}[codec], bgr, params)
    if not ok:
        raise ShardError(f"could not encode a {rgb.shape} image as {codec}")
    return buf.reshape(-1)


def decode_image(buf: np.ndarray) -> np.ndarray:
    if _IMREAD_RGB is not None:  # OpenCV >= 4.10 decodes straight to RGB: no colour swap pass
        rgb = cv2.imdecode(np.asarray(buf, dtype=np.uint8), _IMREAD_RGB)
        if rgb is None:
            raise ShardError("corrupt image bytes")
        return rgb
    bgr = cv2.imdecode(np.asarray(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ShardError("corrupt image bytes")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def encode_label(label: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ids -> grayscale PNG bytes (lossless). Level 1 without row filters: label
    maps are flat regions that deflate handles alone; libpng's adaptive filter search made
    encoding 5x slower for 15% fewer bytes (docs/storage.md)."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"label: expected (H, W) uint8, got {label.shape} {label.dtype}")
    ok, buf = cv2.imencode(".png", label, _PNG_PARAMS)
    if not ok:
        raise ShardError(f"could not encode a {label.shape} label")
    return buf.reshape(-1)


_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def decode_label(buf: np.ndarray) -> np.ndarray:
    label = cv2.imdecode(np.asarray(buf, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2:
        raise ShardError("corrupt label bytes")
    return label


# -- the record -------------------------------------------------------------------------------
@dataclass
class Sample:
    """One decoded sample. Standard (unblended) samples have ``phantom_label=None``, δ = 1."""

    key: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8, dominant G_a
    phantom_label: np.ndarray | None  # (H, W) uint8, phantom G_b
    delta: float = 1.0
    dominant_id: str = ""
    phantom_id: str = ""
    dominant_classes: tuple[int, ...] = ()
    phantom_classes: tuple[int, ...] = ()
    pair: tuple[int, int] = (-1, -1)
    instances: int = -1
    occluded: tuple[bool, ...] = ()


@dataclass(frozen=True)
class ShardHeader:
    """What every shard and the manifest say about the samples they hold."""

    kind: str  # "mixed" or "standard"
    classes: ClassSet
    split: str = "train"
    source: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)  # strategy, delta spec, seed, ...
    image_codec: str = "jpeg"
    image_quality: int = 95
    image_chroma: str = "420"

    def __post_init__(self):
        if self.kind not in ("mixed", "standard"):
            raise ValueError(f"kind: expected 'mixed' or 'standard', got {self.kind!r}")
        if self.image_codec not in IMAGE_CODECS:
            raise ValueError(f"image_codec: expected one of {IMAGE_CODECS}, got {self.image_codec!r}")
        if not 1 <= self.image_quality <= 100:
            raise ValueError(f"image_quality: expected 1..100, got {self.image_quality}")
        if self.image_chroma not in JPEG_CHROMA:
            raise ValueError(f"image_chroma: expected one of {sorted(JPEG_CHROMA)}, got {self.image_chroma!r}")

    def attrs(self) -> dict:
        """HDF5 root attributes: scalars and string arrays that ``h5dump -A`` shows plainly."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "kind": self.kind,
            "split": self.split,
            "class_names": np.array(self.classes.names, dtype=object),
            "background_ids": np.array(self.classes.background, dtype=np.int32),
            "ignore_index": self.classes.ignore_index,
            "palette": self.classes.palette,
            "image_codec": self.image_codec,
            "image_quality": self.image_quality,
            "image_chroma": self.image_chroma,
            "label_codec": "png",
            # The JSON blobs are what from_attrs reads; the flat "source.*" / "generation.*"
            # copies are for people reading h5dump output.
            "source": json.dumps(self.source, sort_keys=True),
            "generation": json.dumps(self.generation, sort_keys=True),
            **{f"source.{k}": _attr_value(v) for k, v in sorted(self.source.items())},
            **{f"generation.{k}": _attr_value(v) for k, v in sorted(self.generation.items())},
        }

    @classmethod
    def from_attrs(cls, attrs, where: str = "") -> "ShardHeader":
        if attrs.get("format") != FORMAT:
            raise ShardError(f"{where}: not a {FORMAT} file")
        if int(attrs.get("format_version", -1)) != FORMAT_VERSION:
            raise ShardError(f"{where}: format version {attrs.get('format_version')} (this tool reads {FORMAT_VERSION})")
        classes = ClassSet(
            names=tuple(_str(n) for n in attrs["class_names"]),
            background=tuple(int(b) for b in attrs["background_ids"]),
            ignore_index=int(attrs["ignore_index"]),
            palette=np.asarray(attrs["palette"], dtype=np.uint8),
        )
        return cls(kind=_str(attrs["kind"]), classes=classes, split=_str(attrs["split"]),
                   source=json.loads(_str(attrs["source"])), generation=json.loads(_str(attrs["generation"])),
                   image_codec=_str(attrs["image_codec"]), image_quality=int(attrs["image_quality"]),
                   image_chroma=_str(attrs.get("image_chroma", "420")))


def _attr_value(v):
    """A plain HDF5 attribute for one parameter: scalars as they are, a non-empty list of
    numbers or of strings as an array (``h5dump`` prints ``0.7, 1``), anything else as JSON."""
    if isinstance(v, (int, float, str, bool)):
        return v
    if isinstance(v, (list, tuple)) and v:
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            return np.asarray(v, dtype=np.float64 if any(isinstance(x, float) for x in v) else np.int64)
        if all(isinstance(x, str) for x in v):
            return np.array(v, dtype=object)
    return json.dumps(v)


def _str(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (HDF5's messages span several)."""
    return " ".join(str(exc).split())


# -- checksums --------------------------------------------------------------------------------
# Fields read sample by sample; the others are small and read whole, once per reader.
_PER_SAMPLE_FIELDS = ("image", "label", "phantom_label")
_COLUMN_FIELDS = tuple(name for name in RECORD_FIELDS if name not in _PER_SAMPLE_FIELDS)


def field_bytes(name: str, value) -> bytes:
    """The canonical bytes of one stored field value, as the checksum sees them: what was
    written and what is read back give the same bytes (h5py returns strings as bytes)."""
    dtype, _ = SCHEMA[name]
    if dtype is _VLEN_U8:
        return np.asarray(value, dtype=np.uint8).tobytes()
    if dtype is _STR:
        return value if isinstance(value, bytes) else str(value).encode("utf-8")
    return np.asarray(value, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def _framed(parts) -> bytes:
    # Each part after its 4-byte little-endian length, so moving bytes from one field to the
    # next changes the checksum.
    return b"".join(len(b).to_bytes(4, "little") + b for b in parts)


def _crc_payload(record: dict, crc: int) -> int:
    """Continue ``crc`` over the image and label maps, framed like the small fields, without
    copying them (zlib reads the arrays' buffers)."""
    for name in _PER_SAMPLE_FIELDS:
        value = np.ascontiguousarray(record[name], dtype=np.uint8)
        crc = zlib.crc32(value, zlib.crc32(len(value).to_bytes(4, "little"), crc))
    return crc


def record_checksum(record: dict) -> int:
    """CRC-32 of every field of a record (the small ones first, then image and label maps):
    one per sample, as TFRecord keeps one per record. CRC-32 rather than CRC-32C because
    zlib's is in the standard library and as fast here (docs/storage.md has its cost)."""
    return _crc_payload(record, zlib.crc32(_framed(field_bytes(n, record[n]) for n in _COLUMN_FIELDS)))


def _column_rows(name: str, column) -> list[bytes]:
    """:func:`field_bytes` of every row of a whole column, fixed-size fields in one conversion."""
    dtype, _ = SCHEMA[name]
    if dtype is _VLEN_U8:
        return [np.asarray(v, dtype=np.uint8).tobytes() for v in column]
    if dtype is _STR:
        return [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in column]
    flat = np.ascontiguousarray(column, dtype=np.dtype(dtype).newbyteorder("<"))
    size = flat.itemsize * int(np.prod(flat.shape[1:], dtype=np.int64))
    raw = flat.tobytes()
    return [raw[i * size:(i + 1) * size] for i in range(len(flat))]


def column_checksums(columns: dict) -> list[int]:
    """Per row: the CRC-32 of its small fields, the start of its record checksum."""
    rows = zip(*(_column_rows(name, columns[name]) for name in _COLUMN_FIELDS))
    return [zlib.crc32(_framed(parts)) for parts in rows]


def check_links(f: h5py.File, where: str) -> None:
    """Refuse a shard whose datasets would read bytes from other files: external or soft
    links, external raw storage, virtual datasets. A shard is one self-contained file."""
    for name in SCHEMA:
        link = f.get(name, getlink=True)
        if link is None:
            raise ShardError(f"{where}: dataset {name!r} missing")
        if not isinstance(link, h5py.HardLink):
            raise ShardError(f"{where}: {name!r} is a {type(link).__name__} (shards must be self-contained)")
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            raise ShardError(f"{where}: {name!r} is not a dataset")
        if ds.external or ds.is_virtual:
            raise ShardError(f"{where}: dataset {name!r} stores its bytes in other files (shards must be self-contained)")


# -- writing ----------------------------------------------------------------------------------
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
            if dtype is _VLEN_U8:
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


def encode_sample(sample: Sample, header: ShardHeader, image_bytes: np.ndarray | None = None) -> dict:
    """Decoded :class:`Sample` -> a record for :meth:`ShardWriter.write` (pure; no files).

    ``image_bytes``: the image already encoded, stored as given instead of re-encoding
    ``sample.image`` (``pack`` copies source JPEGs verbatim); it must decode to ``sample.image``."""
    h, w = sample.label.shape
    if sample.image.shape != (h, w, 3) or sample.image.dtype != np.uint8:
        raise ValueError(f"sample {sample.key}: image {sample.image.shape} {sample.image.dtype} does not match label {h}x{w}")
    if sample.phantom_label is not None and sample.phantom_label.shape != (h, w):
        raise ValueError(f"sample {sample.key}: phantom label {sample.phantom_label.shape} does not match {h}x{w}")
    return {
        "image": (encode_image(sample.image, header.image_codec, header.image_quality, header.image_chroma)
                  if image_bytes is None else np.asarray(image_bytes, dtype=np.uint8).reshape(-1)),
        "label": encode_label(sample.label),
        "phantom_label": np.zeros(0, np.uint8) if sample.phantom_label is None else encode_label(sample.phantom_label),
        "delta": np.float32(sample.delta),
        "key": sample.key,
        "dominant_id": sample.dominant_id,
        "phantom_id": sample.phantom_id,
        "height": h,
        "width": w,
        "dominant_classes": np.asarray(sample.dominant_classes, dtype=np.uint8),
        "phantom_classes": np.asarray(sample.phantom_classes, dtype=np.uint8),
        "pair": np.asarray(sample.pair, dtype=np.int16),
        "instances": sample.instances,
        "occluded": np.asarray(sample.occluded, dtype=np.uint8),
    }


def verify_shard(path: str | Path, expected: int | None = None) -> int:
    """Open a shard, check format, schema and lengths; return its sample count."""
    try:
        with h5py.File(path, "r") as f:
            ShardHeader.from_attrs(f.attrs, str(path))
            n = int(f.attrs["num_samples"])
            check_links(f, str(path))
            for name in SCHEMA:
                if f[name].shape[0] != n:
                    raise ShardError(f"{path}: dataset {name!r} is not of length {n}")
    except OSError as exc:
        raise ShardError(f"{path}: not a readable HDF5 file ({exc})") from None
    if expected is not None and n != expected:
        raise ShardError(f"{path}: holds {n} samples, expected {expected}")
    return n


# -- reading ----------------------------------------------------------------------------------


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
            datasets = {name: f[name] for name in _PER_SAMPLE_FIELDS}
            columns = {name: f[name][:] for name in (*_COLUMN_FIELDS, "checksum")}
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
        return _str(self._columns["key"][i])

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
        if self.check and _crc_payload(record, self._column_crc[i]) != int(self._columns["checksum"][i]):
            raise CorruptSample(self.path, i, self.key(i))
        for name in _COLUMN_FIELDS:
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
            if _crc_payload(record, self._column_crcs()[i]) != int(self._columns["checksum"][i]):
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
    from .datasets.files import MAX_PIXELS, DatasetError, encoded_size, header_size

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


def decode_record(r: dict) -> Sample:
    phantom = r["phantom_label"]
    return Sample(
        key=_str(r["key"]),
        image=decode_image(r["image"]),
        label=decode_label(r["label"]),
        phantom_label=decode_label(phantom) if len(phantom) else None,
        delta=float(r["delta"]),
        dominant_id=_str(r["dominant_id"]),
        phantom_id=_str(r["phantom_id"]),
        dominant_classes=tuple(int(c) for c in r["dominant_classes"]),
        phantom_classes=tuple(int(c) for c in r["phantom_classes"]),
        pair=(int(r["pair"][0]), int(r["pair"][1])),
        instances=int(r["instances"]),
        occluded=tuple(bool(o) for o in r["occluded"]),
    )


# -- directories ------------------------------------------------------------------------------
def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


@dataclass
class ShardDir:
    """A directory of shards described by its ``manifest.json``."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> "ShardDir":
        """Open a shard directory: its manifest well-formed, every listed shard a plain file of
        this directory whose header (format, kind, split, classes, codec, sample count) agrees
        with the manifest. Cheap (one header per shard); :func:`blendgen.verify` reads the bytes."""
        path = Path(path)
        manifest = load_manifest(path)
        for entry in manifest["shards"]:
            check_against_manifest(path / entry["name"], entry, manifest)
        return cls(path=path, manifest=manifest)

    @property
    def classes(self) -> ClassSet:
        return ClassSet.from_json(self.manifest["classes"])

    @property
    def cooccurrence(self) -> np.ndarray | None:
        c = self.manifest.get("cooccurrence")
        return None if c is None else np.asarray(c, dtype=np.int64)

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path / e["name"] for e in self.manifest["shards"]]

    @property
    def num_samples(self) -> int:
        return sum(e["samples"] for e in self.manifest["shards"])

    def readers(self) -> list[ShardReader]:
        return [ShardReader(p) for p in self.shard_paths]

    def verify(self, workers: int = 1) -> None:
        """Every byte against the manifest and the per-sample checksums (what ``blendgen
        verify`` does); ShardError with the first problem found."""
        from .verify import first_problem, verify_directory

        problem = first_problem(verify_directory(self.path, workers, progress=False))
        if problem is not None:
            raise problem


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


# -- resumable, partitioned directories -------------------------------------------------------
# A directory may be written by several processes or machines at once (``--part i/n``): each
# part writes its own shards and a fragment ``manifest.part-I-of-N.json`` listing them; the
# fragments, all present, merge into ``manifest.json``. A rerun keeps every shard that is
# complete and is the one it would write, and rewrites the rest.
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
        stored = [_str(k) for k in f["key"][:]]
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
    from .io import write_json

    directory = Path(directory)
    paths = [directory / part_manifest_name(i, count) for i in range(1, count + 1)]
    missing = [str(i) for i, p in enumerate(paths, 1) if not p.is_file()]
    if missing:
        raise ShardError(f"{directory}: parts {', '.join(missing)} of {count} have not finished "
                         f"(no {part_manifest_name(int(missing[0]), count)})")
    manifest = merge_manifests([json.loads(p.read_text()) for p in paths], str(directory))
    write_json(directory / MANIFEST, manifest)
    return manifest
