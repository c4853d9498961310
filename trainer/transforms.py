"""Paired transforms and batching: one geometry for the image and both label maps.

    rng = np.random.default_rng(seed)
    image, label, phantom = train_transform(crop=321)(image, label, phantom, rng)
    batch = collate([to_sample(s, transform, rng) for s in samples])   # uint8 / int64 tensors
    x = normalize(batch["image"].to(device))                           # on the device

Every transform is ``(image, label, phantom, rng) -> (image, label, phantom)`` on numpy arrays:
image (H, W, 3) uint8 RGB, label and phantom (H, W) uint8 with 255 = ignore, phantom may be None
(standard samples). Randomness comes only from the passed ``numpy.random.Generator``, so a seed
reproduces a sample exactly. Images are resampled bilinearly, labels with nearest neighbour (no
new class ids appear); image padding uses the mean colour (zero after ``normalize``), label
padding the ignore index, so padded pixels never count in a loss or metric.

Normalisation runs on the device, after the uint8 batch is transferred (4x fewer bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import cv2
import numpy as np
import torch
from torch import Tensor

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, the statistics the torchvision backbones expect
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104): image padding

Arrays = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]
Transform = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", np.random.Generator], Arrays]


# -- geometry helpers -----------------------------------------------------------------------------
def _resize(image, label, phantom, size_hw: tuple[int, int]) -> Arrays:
    h, w = size_hw
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    # NEAREST_EXACT samples at pixel centres like INTER_LINEAR does; plain INTER_NEAREST is
    # shifted by up to a pixel, which would misalign labels and image.
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    if phantom is not None:
        phantom = cv2.resize(phantom, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, label, phantom


def _pad(image, label, phantom, top: int, bottom: int, left: int, right: int, fill) -> Arrays:
    def pad(a, value):
        return cv2.copyMakeBorder(a, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)

    image = pad(image, tuple(int(c) for c in fill))
    label = pad(label, IGNORE_INDEX)
    phantom = None if phantom is None else pad(phantom, IGNORE_INDEX)
    return image, label, phantom


def _crop(image, label, phantom, top: int, left: int, size_hw: tuple[int, int]) -> Arrays:
    h, w = size_hw
    window = (slice(top, top + h), slice(left, left + w))
    return (
        image[window],
        label[window],
        None if phantom is None else phantom[window],
    )


def _mirror(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[:, ::-1])  # a copy: torch.from_numpy refuses negative strides


def _check_pair(image: np.ndarray, label: np.ndarray, phantom: np.ndarray | None) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    for name, a in (("label", label), ("phantom", phantom)):
        if a is None:
            continue
        if a.dtype != np.uint8 or a.shape != image.shape[:2]:
            raise ValueError(
                f"{name}: expected {image.shape[:2]} uint8 like the image, got {a.shape} {a.dtype}"
            )


def _size(value: int | Sequence[int]) -> tuple[int, int]:
    h, w = (value, value) if isinstance(value, int) else value
    if h < 1 or w < 1:
        raise ValueError(f"size: expected positive, got {value}")
    return int(h), int(w)


# -- transforms -----------------------------------------------------------------------------------
class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image, label, phantom, rng: np.random.Generator) -> Arrays:
        _check_pair(image, label, phantom)
        for t in self.transforms:
            image, label, phantom = t(image, label, phantom, rng)
        return image, label, phantom

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomScale:
    """Resize by a factor drawn uniformly from [low, high] (DeepLab's 0.5-2.0 augmentation)."""

    def __init__(self, low: float = 0.5, high: float = 2.0) -> None:
        if not 0 < low <= high:
            raise ValueError(f"scale: expected 0 < low <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def __call__(self, image, label, phantom, rng: np.random.Generator) -> Arrays:
        s = rng.uniform(self.low, self.high)
        h, w = label.shape
        return _resize(image, label, phantom, (max(1, round(h * s)), max(1, round(w * s))))

    def __repr__(self) -> str:
        return f"RandomScale({self.low}, {self.high})"


class RandomCrop:
    """A random size x size window; smaller images are first padded at the bottom and right
    (image: ``fill`` colour, labels: ignore), as DeepLab and torchvision's reference do."""

    def __init__(self, size: int | Sequence[int], fill: Sequence[int] = MEAN_RGB) -> None:
        self.size = _size(size)
        self.fill = tuple(fill)

    def __call__(self, image, label, phantom, rng: np.random.Generator) -> Arrays:
        ch, cw = self.size
        h, w = label.shape
        if h < ch or w < cw:
            image, label, phantom = _pad(
                image, label, phantom, 0, max(ch - h, 0), 0, max(cw - w, 0), self.fill
            )
            h, w = label.shape
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return _crop(image, label, phantom, top, left, self.size)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class CenterCrop:
    """The central size x size window (IJCV evaluation on 513 x 513 centre crops); a smaller
    image is padded evenly on both sides (image: ``fill``, labels: ignore) so it stays central."""

    def __init__(self, size: int | Sequence[int], fill: Sequence[int] = MEAN_RGB) -> None:
        self.size = _size(size)
        self.fill = tuple(fill)

    def __call__(self, image, label, phantom, rng: np.random.Generator | None = None) -> Arrays:
        ch, cw = self.size
        h, w = label.shape
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:
            image, label, phantom = _pad(
                image, label, phantom, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, self.fill
            )
            h, w = label.shape
        return _crop(image, label, phantom, (h - ch) // 2, (w - cw) // 2, self.size)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class HorizontalFlip:
    """Mirror left-right with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p: expected a probability, got {p}")
        self.p = p

    def __call__(self, image, label, phantom, rng: np.random.Generator) -> Arrays:
        if rng.random() >= self.p:
            return image, label, phantom
        return _mirror(image), _mirror(label), None if phantom is None else _mirror(phantom)

    def __repr__(self) -> str:
        return f"HorizontalFlip({self.p})"


def train_transform(
    crop: int = 321, scale: tuple[float, float] = (0.5, 2.0), fill: Sequence[int] = MEAN_RGB
) -> Compose:
    """Random scale, random crop (321 BMVC / 513 IJCV), random horizontal flip."""
    return Compose([RandomScale(*scale), RandomCrop(crop, fill), HorizontalFlip(0.5)])


def eval_transform(center_crop: int | None = None, fill: Sequence[int] = MEAN_RGB) -> Compose:
    """Full images (BMVC, ``center_crop=None``) or centre crops (IJCV, ``center_crop=513``)."""
    return Compose([] if center_crop is None else [CenterCrop(center_crop, fill)])


# -- tensors and batches ------------------------------------------------------------------------
def to_tensors(
    image: np.ndarray, label: np.ndarray, phantom: np.ndarray | None
) -> tuple[Tensor, Tensor, Tensor]:
    """-> image (3, H, W) uint8, label (H, W) int64, phantom (H, W) int64 (all ignore if None)."""
    _check_pair(image, label, phantom)
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W) uint8
    y = torch.from_numpy(label.astype(np.int64))  # (H, W)
    if phantom is None:
        z = torch.full(y.shape, IGNORE_INDEX, dtype=torch.int64)  # no phantom target: no CE term
    else:
        z = torch.from_numpy(phantom.astype(np.int64))  # (H, W)
    return x, y, z


def to_sample(sample, transform: Transform, rng: np.random.Generator) -> dict:
    """A decoded ``blendgen.shards.Sample`` -> a dict ``collate`` batches."""
    image, label, phantom = transform(sample.image, sample.label, sample.phantom_label, rng)
    x, y, z = to_tensors(image, label, phantom)
    # "classes": the image-level object class set stored with the sample; saliency samples pair
    # by it (their label is a mask; the classes are pseudo labels, trainer.methods).
    return {"image": x, "label": y, "phantom": z, "delta": float(sample.delta), "key": sample.key,
            "classes": tuple(getattr(sample, "dominant_classes", ()))}


_TENSOR_KEYS = ("image", "label", "phantom")


def collate(samples: Sequence[Mapping]) -> dict:
    """Stack equal-sized samples {image, label, phantom, delta, ...} into a batch:
    image (B, 3, H, W) uint8, label and phantom (B, H, W) int64, delta (B,) float32; any other
    key (e.g. "key") becomes a list."""
    if not samples:
        raise ValueError("collate: empty batch")
    sizes = {tuple(s["image"].shape[-2:]) for s in samples}
    if len(sizes) > 1:
        raise ValueError(f"collate: samples differ in size {sorted(sizes)}; use pad_collate")
    batch = {k: torch.stack([s[k] for s in samples]) for k in _TENSOR_KEYS}
    batch["delta"] = torch.tensor([float(s["delta"]) for s in samples], dtype=torch.float32)
    for k in samples[0].keys() - {*_TENSOR_KEYS, "delta"}:
        batch[k] = [s[k] for s in samples]
    return batch


def pad_collate(samples: Sequence[Mapping], fill: Sequence[int] = MEAN_RGB) -> dict:
    """``collate`` for samples of different sizes (full-image evaluation): each is padded at
    the bottom and right to the largest H and W, the image with ``fill`` (the mean colour, so
    zero after ``normalize``; ours), the labels with the ignore index, so metrics skip the
    padding. The network still sees the padding near each image's border, so the exact
    full-image protocol is batch size 1; padding is a faster approximation."""
    if not samples:
        raise ValueError("pad_collate: empty batch")
    H = max(s["image"].shape[-2] for s in samples)
    W = max(s["image"].shape[-1] for s in samples)
    colour = torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1)
    padded = []
    for s in samples:
        h, w = s["image"].shape[-2:]
        image = colour.expand(3, H, W).clone()  # (3, H, W)
        image[:, :h, :w] = s["image"]
        label = torch.full((H, W), IGNORE_INDEX, dtype=torch.int64)
        label[:h, :w] = s["label"]
        phantom = torch.full((H, W), IGNORE_INDEX, dtype=torch.int64)
        phantom[:h, :w] = s["phantom"]
        padded.append({**s, "image": image, "label": label, "phantom": phantom})
    return collate(padded)


# -- on the device ------------------------------------------------------------------------------
def normalize(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, 3, H, W) or (3, H, W) uint8 -> ImageNet-normalised ``dtype``, keeping the memory
    format (channels_last stays channels_last). Under autocast it returns ``dtype`` still;
    the first convolution casts to bf16/fp16 itself."""
    if x.dtype != torch.uint8:
        raise ValueError(f"normalize: expected uint8 pixels, got {x.dtype}")
    scale, shift = _affine(x.device, dtype, x.ndim)
    # (x / 255 - mean) / std, as one multiply and one subtract on a fresh tensor.
    return x.to(dtype).mul_(scale).sub_(shift)


@lru_cache(maxsize=16)
def _affine(device: torch.device, dtype: torch.dtype, ndim: int) -> tuple[Tensor, Tensor]:
    """(1/(255 std), mean/std) shaped to broadcast over channels; made once per device."""
    shape = (3, 1, 1) if ndim == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(shape)
    return (1.0 / (255.0 * std)).to(device, dtype), (mean / std).to(device, dtype)
