"""The on-disk contract between ``blendgen`` and ``trainer``: HDF5 shards in a directory.

This package alone owns the format; this module holds its schema. A shard directory (``out/mixed``, ``out/train``,
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

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np

from .. import __version__
from ..datasets.classes import ClassSet

FORMAT = "blendgen-shards"
FORMAT_VERSION = 2  # 2: per-sample checksums
IMAGE_CODECS = ("jpeg", "png", "webp")
# JPEG chroma subsampling: "420" halves colour resolution both ways (what VOC's own JPEGs use),
# "444" keeps it. docs/storage.md has the measurements behind the default.
JPEG_CHROMA = {"420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}

VLEN_U8 = h5py.vlen_dtype(np.uint8)
_STR = h5py.string_dtype("utf-8")

# name -> (dtype, per-sample shape). The writer validates every record against it.
SCHEMA: dict[str, tuple[object, tuple[int, ...]]] = {
    "image": (VLEN_U8, ()),
    "label": (VLEN_U8, ()),
    "phantom_label": (VLEN_U8, ()),
    "delta": (np.float32, ()),
    "key": (_STR, ()),
    "dominant_id": (_STR, ()),
    "phantom_id": (_STR, ()),
    "height": (np.int32, ()),
    "width": (np.int32, ()),
    "dominant_classes": (VLEN_U8, ()),
    "phantom_classes": (VLEN_U8, ()),
    "pair": (np.int16, (2,)),
    "instances": (np.int16, ()),
    "occluded": (VLEN_U8, ()),
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
            names=tuple(as_str(n) for n in attrs["class_names"]),
            background=tuple(int(b) for b in attrs["background_ids"]),
            ignore_index=int(attrs["ignore_index"]),
            palette=np.asarray(attrs["palette"], dtype=np.uint8),
        )
        return cls(kind=as_str(attrs["kind"]), classes=classes, split=as_str(attrs["split"]),
                   source=json.loads(as_str(attrs["source"])), generation=json.loads(as_str(attrs["generation"])),
                   image_codec=as_str(attrs["image_codec"]), image_quality=int(attrs["image_quality"]),
                   image_chroma=as_str(attrs.get("image_chroma", "420")))


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


def as_str(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (HDF5's messages span several)."""
    return " ".join(str(exc).split())


# -- checksums --------------------------------------------------------------------------------
# Fields read sample by sample; the others are small and read whole, once per reader.
PER_SAMPLE_FIELDS = ("image", "label", "phantom_label")
COLUMN_FIELDS = tuple(name for name in RECORD_FIELDS if name not in PER_SAMPLE_FIELDS)


def field_bytes(name: str, value) -> bytes:
    """The canonical bytes of one stored field value, as the checksum sees them: what was
    written and what is read back give the same bytes (h5py returns strings as bytes)."""
    dtype, _ = SCHEMA[name]
    if dtype is VLEN_U8:
        return np.asarray(value, dtype=np.uint8).tobytes()
    if dtype is _STR:
        return value if isinstance(value, bytes) else str(value).encode("utf-8")
    return np.asarray(value, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def _framed(parts) -> bytes:
    # Each part after its 4-byte little-endian length, so moving bytes from one field to the
    # next changes the checksum.
    return b"".join(len(b).to_bytes(4, "little") + b for b in parts)


def crc_payload(record: dict, crc: int) -> int:
    """Continue ``crc`` over the image and label maps, framed like the small fields, without
    copying them (zlib reads the arrays' buffers)."""
    for name in PER_SAMPLE_FIELDS:
        value = np.ascontiguousarray(record[name], dtype=np.uint8)
        crc = zlib.crc32(value, zlib.crc32(len(value).to_bytes(4, "little"), crc))
    return crc


def record_checksum(record: dict) -> int:
    """CRC-32 of every field of a record (the small ones first, then image and label maps):
    one per sample, as TFRecord keeps one per record. CRC-32 rather than CRC-32C because
    zlib's is in the standard library and as fast here (docs/storage.md has its cost)."""
    return crc_payload(record, zlib.crc32(_framed(field_bytes(n, record[n]) for n in COLUMN_FIELDS)))


def _column_rows(name: str, column) -> list[bytes]:
    """:func:`field_bytes` of every row of a whole column, fixed-size fields in one conversion."""
    dtype, _ = SCHEMA[name]
    if dtype is VLEN_U8:
        return [np.asarray(v, dtype=np.uint8).tobytes() for v in column]
    if dtype is _STR:
        return [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in column]
    flat = np.ascontiguousarray(column, dtype=np.dtype(dtype).newbyteorder("<"))
    size = flat.itemsize * int(np.prod(flat.shape[1:], dtype=np.int64))
    raw = flat.tobytes()
    return [raw[i * size:(i + 1) * size] for i in range(len(flat))]


def column_checksums(columns: dict) -> list[int]:
    """Per row: the CRC-32 of its small fields, the start of its record checksum."""
    rows = zip(*(_column_rows(name, columns[name]) for name in COLUMN_FIELDS))
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


# -- records <-> samples ------------------------------------------------------------------------
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


def decode_record(r: dict) -> Sample:
    phantom = r["phantom_label"]
    return Sample(
        key=as_str(r["key"]),
        image=decode_image(r["image"]),
        label=decode_label(r["label"]),
        phantom_label=decode_label(phantom) if len(phantom) else None,
        delta=float(r["delta"]),
        dominant_id=as_str(r["dominant_id"]),
        phantom_id=as_str(r["phantom_id"]),
        dominant_classes=tuple(int(c) for c in r["dominant_classes"]),
        phantom_classes=tuple(int(c) for c in r["phantom_classes"]),
        pair=(int(r["pair"][0]), int(r["pair"][1])),
        instances=int(r["instances"]),
        occluded=tuple(bool(o) for o in r["occluded"]),
    )


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

