"""Pixel blending of a dominant and a phantom image (BMVC Eq. 1, IJCV Eq. 1). Pure functions.

``I = δ·I_a + (1−δ)·I_b``: computed in float32 and rounded half-to-even to uint8. The two
label maps are never mixed; the dominant's is kept as is, the phantom's travels alongside.

(ours) Images differ in size; the phantom is brought to the dominant's H×W: its image with
area averaging when it shrinks on both axes (no aliasing) and bilinear otherwise, its label
map with nearest neighbour sampled at pixel centres (ids are not numbers to interpolate). The dominant is never resampled.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_pair(image: np.ndarray, label: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H', W', 3) image and (H', W') label -> both at ``hw`` = (H, W); unchanged if already there."""
    h, w = hw
    if image.shape[:2] == (h, w) and label.shape == (h, w):
        return image, label
    shrinking = h <= image.shape[0] and w <= image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    image = cv2.resize(image, (w, h), interpolation=interpolation)
    # NEAREST_EXACT samples at pixel centres, as INTER_LINEAR and INTER_AREA do for the image;
    # plain INTER_NEAREST shifts the label map by up to a pixel against it (trainer.transforms too).
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, label


def blend_images(dominant: np.ndarray, phantom: np.ndarray, delta: float) -> np.ndarray:
    """``round(δ·dominant + (1−δ)·phantom)`` for two (H, W, 3) uint8 images of the same size.

    The float32 arithmetic is spelled out in place (two products, one sum, as the formula
    reads) so it equals the obvious numpy expression bit for bit at half its cost. A convex
    combination of values in [0, 255] stays there up to float32 rounding, so no clipping.
    """
    if dominant.shape != phantom.shape:
        raise ValueError(f"blend: dominant {dominant.shape} and phantom {phantom.shape} differ in shape")
    d = np.float32(delta)
    out = dominant.astype(np.float32)
    out *= d
    weighted = phantom.astype(np.float32)
    weighted *= np.float32(1) - d
    out += weighted
    np.rint(out, out=out)
    return out.astype(np.uint8)


def blend_pair(dominant: tuple[np.ndarray, np.ndarray], phantom: tuple[np.ndarray, np.ndarray],
               delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, label) of each source -> (blended image, dominant label, phantom label at the
    dominant's size). The dominant label is returned untouched."""
    image_a, label_a = dominant
    image_b, label_b = resize_pair(*phantom, label_a.shape)
    return blend_images(image_a, image_b, delta), label_a, label_b
