"""The on-disk contract between ``blendgen`` and ``trainer``: HDF5 shards in a directory.

This module alone owns the format. A shard directory (``out/mixed``, ``out/train``,
``out/val``) holds ``shard-NNNNN.h5`` files and a ``manifest.json`` that lists them with their
sample counts and SHA-256 checksums, plus everything a reader needs without the source
dataset: class names, palette, ignore index, background ids, the co-occurrence matrix, the
generation parameters (strategy, delta spec, seed) and the source dataset description.

Each shard (format ``blendgen-shards``, version 1) carries the same description in its root
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

Shards are written under a temporary name, re-opened and verified, then renamed: a file
named ``shard-*.h5`` is always complete. A directory written in parts (``--part i/n``) also
holds ``manifest.part-I-of-N.json`` fragments, merged into ``manifest.json`` when all are
present. docs/storage.md has the measurements behind the codecs and the layout.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np

from . import __version__
from .classes import ClassSet

FORMAT = "blendgen-shards"
FORMAT_VERSION = 1
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
}

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
}


class ShardError(ValueError):
    """A shard or shard directory that is missing, corrupt or of another format."""


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
    return v.decode() if isinstance(v, bytes) else str(v)


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
    appended in blocks; on a clean exit the file is closed, re-opened and checked, then renamed
    to ``path``; on an error the temporary file is deleted. ``info`` then holds the manifest entry.
    """

    def __init__(self, path: str | Path, header: ShardHeader, block: int = 64):
        self.path = Path(path)
        self.header = header
        self.block = block
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._buffer: list[dict] = []
        self._count = 0
        self._file: h5py.File | None = None
        self.info: dict | None = None

    def __enter__(self) -> "ShardWriter":
        self._file = h5py.File(self.tmp, "w", libver=("earliest", "v110"))
        for k, v in self.header.attrs().items():
            self._file.attrs[k] = v
        for name, (dtype, shape) in SCHEMA.items():
            # track_times=False: no timestamps, so a fixed seed gives byte-identical shards.
            ds = self._file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                           chunks=(self.block, *shape), track_times=False)
            ds.attrs["description"] = DESCRIPTIONS[name]
        return self

    def write(self, record: dict) -> None:
        missing = SCHEMA.keys() - record.keys()
        extra = record.keys() - SCHEMA.keys()
        if missing or extra:
            raise ValueError(f"record {record.get('key')!r}: missing fields {sorted(missing)}, unknown {sorted(extra)}")
        self._buffer.append(record)
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
            self._file.close()
            if exc_type is None:
                verify_shard(self.tmp, expected=self._count)
                digest = sha256_file(self.tmp)
                os.replace(self.tmp, self.path)
                self.info = {"name": self.path.name, "samples": self._count, "sha256": digest,
                             "bytes": self.path.stat().st_size}
        finally:
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
            for name in SCHEMA:
                if name not in f or f[name].shape[0] != n:
                    raise ShardError(f"{path}: dataset {name!r} missing or not of length {n}")
    except OSError as exc:
        raise ShardError(f"{path}: not a readable HDF5 file ({exc})") from None
    if expected is not None and n != expected:
        raise ShardError(f"{path}: holds {n} samples, expected {expected}")
    return n


# -- reading ----------------------------------------------------------------------------------
# Fields read sample by sample; the others are small and read whole, once per reader.
_PER_SAMPLE_FIELDS = ("image", "label", "phantom_label")


class ShardReader:
    """Random access to one shard. The h5py handle is opened lazily and re-opened after a
    fork, since HDF5 handles do not survive fork or pickling: DataLoader workers each get
    their own.

    Speed (docs/storage.md): looking a dataset up by name costs as much as reading from it
    and each h5py read has a fixed cost, so the reader keeps its dataset handles and loads the
    small per-sample fields (key, ids, δ, sizes, class sets, ...) whole on first use; a sample
    then costs three reads (image, label, phantom label) instead of fourteen reads and lookups.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid = None
        self._datasets: dict | None = None  # name -> h5py.Dataset, per-sample fields
        self._columns: dict | None = None  # name -> whole column, the small fields
        with h5py.File(self.path, "r") as f:
            self.header = ShardHeader.from_attrs(f.attrs, str(self.path))
            self.num_samples = int(f.attrs["num_samples"])

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self):
        return {"path": self.path, "header": self.header, "num_samples": self.num_samples}

    def __setstate__(self, state):
        self.__dict__.update(state, _file=None, _pid=None, _datasets=None, _columns=None)

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._datasets = self._columns = None  # handles of another process are stale
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._datasets = self._columns = None

    def _load(self) -> None:
        f = self.file
        if self._datasets is None:
            self._datasets = {name: f[name] for name in _PER_SAMPLE_FIELDS}
            self._columns = {name: f[name][:] for name in SCHEMA if name not in _PER_SAMPLE_FIELDS}

    def read_raw(self, i: int) -> dict:
        """The stored record of sample ``i`` (encoded bytes, no decoding)."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"{self.path}: sample {i} out of range 0..{self.num_samples - 1}")
        self._load()
        record = {name: ds[i] for name, ds in self._datasets.items()}
        for name, column in self._columns.items():
            value = column[i]
            record[name] = value.copy() if isinstance(value, np.ndarray) else value  # callers may modify it
        return {name: record[name] for name in SCHEMA}

    def read(self, i: int) -> Sample:
        return decode_record(self.read_raw(i))

    def __iter__(self):
        for i in range(self.num_samples):
            yield self.read(i)


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
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise ShardError(f"{mpath}: missing; not a shard directory (run `blendgen mix` or `blendgen pack`)")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise ShardError(f"{mpath}: unreadable manifest ({exc})") from None
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise ShardError(f"{mpath}: not a {FORMAT} v{FORMAT_VERSION} manifest")
        for entry in manifest["shards"]:
            if not (path / entry["name"]).is_file():
                raise ShardError(f"{path / entry['name']}: listed in the manifest but missing")
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

    def verify(self) -> None:
        """Recompute every checksum against the manifest."""
        for entry in self.manifest["shards"]:
            p = self.path / entry["name"]
            if sha256_file(p) != entry["sha256"]:
                raise ShardError(f"{p}: checksum differs from the manifest")


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
