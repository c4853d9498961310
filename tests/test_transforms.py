"""Paired transforms keep image, label and phantom aligned; padding, determinism, batching."""

import numpy as np
import pytest
import torch

from trainer.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEAN_RGB,
    CenterCrop,
    Compose,
    HorizontalFlip,
    RandomCrop,
    RandomScale,
    collate,
    eval_transform,
    normalize,
    pad_collate,
    to_sample,
    to_tensors,
    train_transform,
)

IGNORE = 255


def _coordinates(h, w):
    """Image whose R and G channels are the row and column; label = row, phantom = column.
    Any geometric transform applied identically keeps image[..., 0] == label and
    image[..., 1] == phantom, pixel for pixel."""
    rows, cols = np.mgrid[0:h, 0:w].astype(np.uint8)
    image = np.stack([rows, cols, np.full_like(rows, 7)], axis=-1)
    return image, rows.copy(), cols.copy()


def _assert_aligned(image, label, phantom, tol=0):
    valid = label != IGNORE
    assert (phantom[valid] != IGNORE).all() and (phantom[~valid] == IGNORE).all()
    diff_l = np.abs(image[..., 0].astype(int) - label.astype(int))[valid]
    diff_p = np.abs(image[..., 1].astype(int) - phantom.astype(int))[valid]
    assert diff_l.max(initial=0) <= tol and diff_p.max(initial=0) <= tol
    # Padded pixels: mean colour in the image, ignore in both labels.
    assert (image[~valid] == np.array(MEAN_RGB, np.uint8)).all()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [(60, 90), (20, 30)])  # larger and smaller than the crop
def test_crop_and_flip_move_image_and_labels_together(seed, size):
    image, label, phantom = _coordinates(*size)
    t = Compose([RandomCrop(40), HorizontalFlip(0.5)])
    out = t(image, label, phantom, np.random.default_rng(seed))
    assert [a.shape[:2] for a in out] == [(40, 40)] * 3
    _assert_aligned(*out)


@pytest.mark.parametrize("seed", range(6))
def test_full_train_transform_keeps_labels_within_a_pixel_of_the_image(seed):
    # Bilinear image vs nearest labels after scaling: at most one level apart on a ramp.
    image, label, phantom = _coordinates(70, 100)
    out = train_transform(crop=64)(image, label, phantom, np.random.default_rng(seed))
    assert [a.shape[:2] for a in out] == [(64, 64)] * 3
    _assert_aligned(*out, tol=1)


@pytest.mark.parametrize("factor", [0.37, 0.5, 1.3, 2.0])
def test_scaling_resamples_labels_in_register_with_the_image(factor):
    image, label, phantom = _coordinates(80, 120)
    out = RandomScale(factor, factor)(image, label, phantom, np.random.default_rng(0))
    assert out[1].shape == (round(80 * factor), round(120 * factor))
    _assert_aligned(*out, tol=1)


def test_labels_are_resampled_nearest_so_no_new_ids_appear():
    rng = np.random.default_rng(0)
    ids = np.array([0, 3, 7, 200, IGNORE], np.uint8)
    label = ids[rng.integers(0, len(ids), (50, 70))]
    phantom = ids[rng.integers(0, len(ids), (50, 70))]
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    for seed in range(5):
        _, l2, p2 = train_transform(crop=48)(image, label, phantom, np.random.default_rng(seed))
        assert set(np.unique(l2)) <= set(ids) and set(np.unique(p2)) <= set(ids)


def test_random_crop_pads_small_images_with_mean_colour_and_ignore():
    image = np.full((10, 20, 3), 9, np.uint8)
    label = np.zeros((10, 20), np.uint8)
    out_i, out_l, out_p = RandomCrop(30)(image, label, label.copy(), np.random.default_rng(0))
    # Padding goes to the bottom and right; the image sits at the top-left.
    assert (out_i[:10, :20] == 9).all() and (out_l[:10, :20] == 0).all()
    assert (out_i[10:] == MEAN_RGB).all() and (out_i[:, 20:] == MEAN_RGB).all()
    assert (out_l[10:] == IGNORE).all() and (out_p[:, 20:] == IGNORE).all()


def test_center_crop_pads_evenly_and_crops_the_middle():
    image, label, phantom = _coordinates(9, 7)
    out = CenterCrop(13)(image, label, phantom)
    assert out[0].shape == (13, 13, 3)
    # 4 rows of padding split 2/2, 6 columns 3/3.
    assert (out[1][2:11, 3:10] == label).all()
    assert (out[1][:2] == IGNORE).all() and (out[1][11:] == IGNORE).all()
    assert (out[0][:, :3] == MEAN_RGB).all() and (out[2][:, 10:] == IGNORE).all()
    # A larger image: the central window.
    big = _coordinates(20, 30)
    i, l, p = CenterCrop(10)(*big)
    assert l[0, 0] == 5 and p[0, 0] == 10 and l.shape == (10, 10)


def test_same_seed_same_output_and_seeds_differ():
    image, label, phantom = _coordinates(90, 110)
    t = train_transform(crop=50)
    runs = [t(image, label, phantom, np.random.default_rng(s)) for s in (1, 1, 2, 3, 4)]
    for a, b in zip(runs[0], runs[1]):
        assert np.array_equal(a, b)
    assert any(not np.array_equal(runs[0][0], r[0]) for r in runs[2:])


def test_phantom_none_passes_through_and_becomes_all_ignore_tensor():
    image, label, _ = _coordinates(40, 40)
    i, l, p = train_transform(crop=32)(image, label, None, np.random.default_rng(0))
    assert p is None
    x, y, z = to_tensors(i, l, p)
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and z.dtype == torch.int64
    assert (z == IGNORE).all()
    assert torch.equal(x[0].long(), torch.from_numpy(i[..., 0]).long())


def test_flip_probability_extremes():
    image, label, phantom = _coordinates(5, 6)
    rng = np.random.default_rng(0)
    same = HorizontalFlip(0.0)(image, label, phantom, rng)
    assert all(np.array_equal(a, b) for a, b in zip(same, (image, label, phantom)))
    flipped = HorizontalFlip(1.0)(image, label, phantom, rng)
    assert np.array_equal(flipped[2][:, 0], phantom[:, -1])
    _assert_aligned(*flipped)


def test_eval_transform_is_identity_or_center_crop():
    image, label, phantom = _coordinates(30, 40)
    out = eval_transform()(image, label, phantom, None)
    assert all(np.array_equal(a, b) for a, b in zip(out, (image, label, phantom)))
    assert eval_transform(center_crop=20)(image, label, phantom, None)[0].shape == (20, 20, 3)


def test_mismatched_label_shape_is_rejected():
    image, label, _ = _coordinates(10, 10)
    with pytest.raises(ValueError, match="phantom"):
        train_transform(crop=8)(image, label, label[:5], np.random.default_rng(0))


class _Sample:  # the fields of blendgen.shards.Sample that to_sample reads
    def __init__(self, key, h, w, delta, phantom=True):
        self.key, self.delta = key, delta
        self.image, self.label, p = _coordinates(h, w)
        self.phantom_label = p if phantom else None


def test_collate_stacks_samples_into_a_batch():
    t = train_transform(crop=24)
    rng = np.random.default_rng(0)
    samples = [_Sample("a", 30, 30, 0.8), _Sample("b", 40, 20, 1.0, phantom=False)]
    batch = collate([to_sample(s, t, rng) for s in samples])
    assert batch["image"].shape == (2, 3, 24, 24) and batch["image"].dtype == torch.uint8
    assert batch["label"].shape == (2, 24, 24) and batch["label"].dtype == torch.int64
    assert batch["phantom"].dtype == torch.int64 and (batch["phantom"][1] == IGNORE).all()
    assert batch["delta"].dtype == torch.float32
    assert batch["delta"].tolist() == pytest.approx([0.8, 1.0])
    assert batch["key"] == ["a", "b"]


def test_collate_refuses_different_sizes_and_pad_collate_pads():
    t = eval_transform()
    rng = np.random.default_rng(0)
    samples = [to_sample(_Sample(k, h, w, 1.0), t, rng) for k, h, w in [("a", 10, 12), ("b", 14, 8)]]
    with pytest.raises(ValueError, match="pad_collate"):
        collate(samples)
    batch = pad_collate(samples)
    assert batch["image"].shape == (2, 3, 14, 12)
    assert torch.equal(batch["image"][0, :, :10, :12], samples[0]["image"])
    assert (batch["image"][0, :, 10:] == torch.tensor(MEAN_RGB).view(3, 1, 1)).all()
    assert (batch["label"][0, 10:] == IGNORE).all() and (batch["phantom"][1, :, 8:] == IGNORE).all()
    assert torch.equal(batch["label"][1, :14, :8], samples[1]["label"])


def test_normalize_matches_imagenet_statistics_and_padding_maps_near_zero():
    x = torch.randint(0, 256, (2, 3, 8, 9), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x), (x / 255.0 - mean) / std, atol=1e-5)
    assert torch.allclose(normalize(x[0]), normalize(x)[0])
    pad = torch.tensor(MEAN_RGB, dtype=torch.uint8).view(3, 1, 1)
    assert normalize(pad).abs().max() < 0.01
    with pytest.raises(ValueError):
        normalize(x.float())


def test_normalize_keeps_channels_last_and_works_under_bf16_autocast():
    x = torch.randint(0, 256, (2, 3, 8, 9), dtype=torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    y = normalize(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = normalize(x)
        conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        assert conv(z).dtype == torch.bfloat16
    assert z.dtype == torch.float32 and torch.equal(y, z)
    assert normalize(x, dtype=torch.bfloat16).dtype == torch.bfloat16
