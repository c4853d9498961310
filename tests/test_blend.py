"""Pixel blending (BMVC Eq. 1) against a plain numpy reference; phantom resizing."""

import cv2
import numpy as np
import pytest

from blendgen.generation.blend import blend_images, blend_pair, resize_pair


def reference_blend(a: np.ndarray, b: np.ndarray, delta: float) -> np.ndarray:
    """The formula as written: I = δ·I_a + (1−δ)·I_b in float32, rounded to uint8."""
    d = np.float32(delta)
    return np.rint(d * a.astype(np.float32) + (np.float32(1) - d) * b.astype(np.float32)).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("delta", [0.5, 0.6, 0.7, 0.8137, 0.9999, 1.0])
def test_blend_equals_the_numpy_reference_exactly(delta):
    rng = np.random.default_rng(int(delta * 1e4))
    a = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = blend_images(a, b, delta)
    assert out.dtype == np.uint8 and out.shape == a.shape
    assert np.array_equal(out, reference_blend(a, b, delta))


def test_blend_covers_every_pixel_value_pair():
    v = np.arange(256, dtype=np.uint8)
    a = np.repeat(v, 256).reshape(256, 256, 1).repeat(3, axis=2)  # every (a, b) value pair
    b = np.tile(v, 256).reshape(256, 256, 1).repeat(3, axis=2)
    for delta in np.linspace(0.5, 1.0, 11, dtype=np.float32):
        assert np.array_equal(blend_images(a, b, delta), reference_blend(a, b, delta))


def test_delta_one_returns_the_dominant_and_dominant_weighs_more():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert np.array_equal(blend_images(a, b, 1.0), a)
    out = blend_images(a, b, 0.8).astype(int)
    assert np.abs(out - a).sum() < np.abs(out - b).sum()


def test_blend_refuses_images_of_different_sizes():
    with pytest.raises(ValueError, match="differ in shape"):
        blend_images(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8), 0.7)


def test_resize_pair_shrinks_with_area_and_labels_with_nearest():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 3, 15, 255], np.uint8), (60, 80))
    out_image, out_label = resize_pair(image, label, (30, 50))
    assert out_image.shape == (30, 50, 3) and out_label.shape == (30, 50)
    assert np.array_equal(out_image, cv2.resize(image, (50, 30), interpolation=cv2.INTER_AREA))
    assert np.array_equal(out_label, cv2.resize(label, (50, 30), interpolation=cv2.INTER_NEAREST_EXACT))
    assert set(np.unique(out_label)) <= {0, 3, 15, 255}  # no interpolated ids


def test_resize_pair_grows_bilinearly_when_any_side_grows():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    label = rng.integers(0, 4, (20, 30), dtype=np.uint8)
    out_image, _ = resize_pair(image, label, (25, 28))  # taller, narrower: not a pure shrink
    assert np.array_equal(out_image, cv2.resize(image, (28, 25), interpolation=cv2.INTER_LINEAR))


def test_resize_pair_leaves_same_size_inputs_untouched():
    image, label = np.zeros((5, 6, 3), np.uint8), np.zeros((5, 6), np.uint8)
    out_image, out_label = resize_pair(image, label, (5, 6))
    assert out_image is image and out_label is label


def test_blend_pair_resizes_the_phantom_never_the_dominant():
    rng = np.random.default_rng(3)
    dom = (rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), rng.integers(0, 21, (40, 50), dtype=np.uint8))
    ph = (rng.integers(0, 256, (64, 48, 3), dtype=np.uint8), rng.integers(0, 21, (64, 48), dtype=np.uint8))
    image, label, phantom_label = blend_pair(dom, ph, 0.75)
    assert label is dom[1]
    ph_image, ph_label = resize_pair(*ph, (40, 50))
    assert np.array_equal(phantom_label, ph_label)
    assert np.array_equal(image, reference_blend(dom[0], ph_image, 0.75))


def test_resized_phantom_label_stays_aligned_with_its_image():
    # Where the bilinearly resized one-hot map of a class is clearly that class (> 0.75), the
    # resized label must say so too. INTER_NEAREST samples off-centre and breaks this when
    # shrinking (2 of 6 such pixels wrong at 20 -> 6 columns); NEAREST_EXACT keeps it.
    label = np.tile(np.repeat(np.arange(5, dtype=np.uint8) % 2, 4), (4, 1))  # (4, 20): 4-px stripes
    image = np.repeat((label * 255)[..., None], 3, axis=2).astype(np.uint8)
    for width in (6, 9, 13, 30, 50):
        _, out_label = resize_pair(image, label, (4, width))
        onehot = np.stack([(label == k).astype(np.float32) for k in (0, 1)], axis=-1)
        soft = cv2.resize(onehot, (width, 4), interpolation=cv2.INTER_LINEAR)  # (4, width, 2)
        clear = soft.max(-1) > 0.75
        assert np.array_equal(out_label[clear], soft.argmax(-1)[clear]), width
