"""A dataset's files, read and written with the checks every dataset needs.

Images (RGB, with the header size, the pixel limit and JPEG damage checked before anything is
decoded), label PNGs (uint8 ids from palette or grayscale PNGs, their histograms, atomic writes),
id lists and small text files. Bad input raises :class:`DatasetError` with one line naming the file
and what is wrong; :class:`DatasetWarning` is for what a person should know but does not stop the
reading. The shard reader checks stored bytes with the same header readers
(:func:`blendgen.shards.reader.size_problem`).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


class DatasetError(ValueError):
    """Bad input data; the message is one line naming the file and the problem.

    Line breaks in the message (from wrapped library errors) are folded into spaces, so
    that logs and the command line always show one line per problem.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


class DatasetWarning(UserWarning):
    """Something about the dataset a person should know that does not stop the reading; the
    command line prints it as one line."""


# -- text files --------------------------------------------------------------------------------
def require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DatasetError(f"{path}: missing {what}")


def describe_error(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"


def read_text_file(path: Path, what: str) -> str:
    require_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable {what} ({describe_error(exc)})") from None


def numbered_lines(path: Path, what: str) -> list[str]:
    """Lines of a file where line ``i`` describes id ``i``: trailing blank lines are dropped,
    a blank line inside would shift every later id and is an error."""
    lines = [line.strip() for line in read_text_file(path, what).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DatasetError(f"{path}: {what} is empty")
    if "" in lines:
        raise DatasetError(f"{path}: line {lines.index('') + 1} of the {what} is blank (line i names id i-1)")
    return lines


# Images over this many pixels are refused from their header, before anything is decoded: a
# 9-KB JPEG can claim 30000x30000, and decoding it takes tens of GB. 100 Mpx is above what
def read_id_list(path: Path) -> list[str]:
    """The ids of an image-set list, one per line; an id listed twice is an error naming both
    lines (it would give two samples one key in every shard made from the list)."""
    text = read_text_file(path, "image-set list")
    # VOC's per-class lists hold "id flag"; the id is the first word.
    numbered = [(n, line.split()[0]) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise DatasetError(f"{path}: image-set list is empty")
    first: dict[str, int] = {}
    for n, image_id in numbered:
        if image_id in first:
            raise DatasetError(f"{path}: id {image_id!r} is listed twice (lines {first[image_id]} and {n})")
        first[image_id] = n
    return [image_id for _, image_id in numbered]


# -- images ------------------------------------------------------------------------------------


# Images over this many pixels are refused from their header, before anything is decoded: a
# 9-KB JPEG can claim 30000x30000, and decoding it takes tens of GB. 100 Mpx is above what
# cameras and phones save (12 to 50 Mpx) and below PIL's own refusal at 179 Mpx. Commands that
# decode user images take --max-pixels to change it; None = no limit of ours.
MAX_PIXELS = 100_000_000

_PIL_LIMIT = threading.Lock()  # Image.MAX_IMAGE_PIXELS is global: lifted for one open at a time


def read_rgb(path: Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    require_file(path, "image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable image ({describe_error(exc)})") from None
    header_size(path, max_pixels, data)  # a decompression bomb is refused before it is decoded
    if jpeg_truncated(data):
        raise DatasetError(f"{path}: truncated JPEG (no end-of-image marker)")
    if data.startswith(b"\xff\xd8") and (problem := jpeg_damage(data)):
        raise DatasetError(f"{path}: corrupt JPEG ({problem})")
    # EXIF orientation is ignored so that the decoded size matches the header size that
    # image_size() reports and the size the annotations were drawn on.
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise DatasetError(f"{path}: unreadable image (not a JPEG/PNG that OpenCV can decode)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def jpeg_damage(data: bytes) -> str | None:
    """libjpeg's warning for a JPEG whose compressed data is damaged but decodable ("Corrupt
    JPEG data: ...", "Premature end of JPEG file"), None for a clean one. OpenCV prints such
    warnings to stderr and returns an image anyway; simplejpeg's strict mode raises them.
    Decoding at 1/8 scale still entropy-decodes every block, which is where damage shows, at
    a fraction of a full decode's cost (docs/storage.md)."""
    try:
        import simplejpeg
    except ImportError:  # declared dependency; without it damaged-but-decodable JPEGs pass
        return None
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as exc:
        text = " ".join(str(exc).split())
        if "color" in text.lower() or "colorspace" in text.lower():
            return None  # e.g. CMYK: a conversion simplejpeg lacks, not damage; OpenCV decodes it
        return text
    return None


def jpeg_truncated(data: bytes) -> bool:
    """True when a JPEG stream stops before its end-of-image marker, as a cut-off download
    does. OpenCV decodes such files without an error, filling the missing rows with grey,
    so the cut has to be found here.

    The header segments are skipped by their lengths (an EXIF thumbnail inside them has its
    own end marker), then the end marker must follow the first scan. Data other than JPEG
    gives False: the decoder judges it.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False  # malformed header: let the decoder report it
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xDA:  # start of scan: compressed data runs to the end marker
            return data.find(b"\xff\xd9", pos) < 0
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length field
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return True  # the file ends inside the header


def header_size(path: Path, max_pixels: int | None = MAX_PIXELS, data: bytes | None = None,
                hint: str = "") -> tuple[int, int]:
    """(H, W) from the image header alone (PIL's lazy open decodes no pixels), of the file
    ``path`` or of its bytes ``data`` already read. DatasetError naming the file when it is
    unreadable or has more than ``max_pixels`` pixels (``hint`` says how to allow it)."""
    if data is None:
        require_file(path, "image")
    try:
        try:
            w, h = _pil_size(path, data)
        except Image.DecompressionBombError as exc:
            # PIL refuses above 2 x MAX_IMAGE_PIXELS before telling the size; ours may be higher
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = int(found.group(1)) if found else None
            if max_pixels is not None and (pixels is None or pixels > max_pixels):
                raise DatasetError(f"{path}: image of {_mpx(pixels)} Mpx, over the limit of {_mpx(max_pixels)} Mpx; "
                                   f"not decoded{hint}") from None
            with _PIL_LIMIT:
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    w, h = _pil_size(path, data)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except DatasetError:
        raise
    except Image.UnidentifiedImageError as exc:
        # PIL names a memory buffer by its object address: say what it means instead
        reason = describe_error(exc) if data is None else "not an image format PIL knows"
        raise DatasetError(f"{path}: unreadable image ({reason})") from None
    except Exception as exc:
        raise DatasetError(f"{path}: unreadable image ({describe_error(exc)})") from None
    if max_pixels is not None and w * h > max_pixels:
        raise DatasetError(f"{path}: image of {w}x{h} = {_mpx(w * h)} Mpx, over the limit of {_mpx(max_pixels)} Mpx; "
                           f"not decoded{hint}")
    return h, w


def _pil_size(path: Path, data: bytes | None) -> tuple[int, int]:
    import io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is ours to apply
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            return im.size


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are not frames
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def encoded_size(data: bytes) -> tuple[int, int] | None:
    """(W, H) read straight from a PNG's IHDR or a JPEG's start-of-frame segment, or None for
    anything else: what the shards hold, in ~1/20 of the time of PIL's lazy open (the trainer's
    shard reader checks every sample it reads, :func:`blendgen.shards.reader.size_problem`)."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None  # not at a marker: leave the odd file to PIL
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker in _JPEG_FRAMES:  # FF Cn, length (2), precision (1), height (2), width (2)
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _mpx(pixels: int | None) -> str:
    return "?" if pixels is None else f"{pixels / 1e6:.1f}".removesuffix(".0")


# -- label PNGs ---------------------------------------------------------------------------------
def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as uint8 ids. Palette PNGs give their indices (VOC ``SegmentationClass``),
    grayscale PNGs their values (SBD-aug, COCO conversions, folders). OpenCV would expand a
    palette to colours, so labels go through Pillow."""
    with _open_label(path) as im:
        return np.array(im)  # a writable copy; np.asarray would give a read-only view


def read_label_histogram(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """(256-bin histogram of the label ids, (H, W)) without building a numpy array: Pillow
    counts the decoded pixels in C, which is all ``build-clusters`` needs."""
    with _open_label(path) as im:
        return np.asarray(im.histogram(), dtype=np.int64), (im.height, im.width)


@contextlib.contextmanager
def _open_label(path: Path):
    require_file(path, "label")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(f"{path}: label must be a palette or 8-bit grayscale PNG, got mode {im.mode}")
            im.load()
            yield im
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises several types for corrupt files
        raise DatasetError(f"{path}: unreadable label ({describe_error(exc)})") from None


def write_label_png(path: Path, label: np.ndarray) -> None:
    """Write a grayscale label PNG atomically: a temporary name unique to this process and
    thread, then a rename. Readers in other processes see the old state or the whole new
    file, and two workers converting the same image cannot corrupt it."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.png")
    try:
        if not cv2.imwrite(str(tmp), label):
            raise OSError("OpenCV could not write the PNG")
        os.replace(tmp, path)
    except (OSError, cv2.error) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{path}: cannot write label ({describe_error(exc)})") from None
