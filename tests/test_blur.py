"""Gaussian blur of whole images and of object pixels only."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from trainer.blur import blur, gaussian_blur, gaussian_kernel, object_mask


def test_kernel_is_normalised_symmetric_and_truncated_at_three_sigma():
    for sigma, length in [(1, 7), (2, 13), (0.4, 5), (12, 73)]:
        k = gaussian_kernel(sigma)
        assert k.numel() == length
        torch.testing.assert_close(k.sum(), torch.tensor(1.0))
        torch.testing.assert_close(k, k.flip(0))
    with pytest.raises(ValueError, match="^sigma:"):
        gaussian_kernel(0)


def test_blur_matches_opencv_with_replicated_edges():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (20, 30, 3)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(image).permute(2, 0, 1)[None], 2.0)[0].permute(1, 2, 0).numpy()
    theirs = cv2.GaussianBlur(image, (13, 13), 2.0, borderType=cv2.BORDER_REPLICATE)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_blur_keeps_flat_images_and_sizes():
    x = torch.full((2, 3, 9, 11), 77.0)
    for sigma in (1, 8, 12):  # a kernel wider than the image is fine
        out = gaussian_blur(x, sigma)
        assert out.shape == x.shape
        torch.testing.assert_close(out, x)


def test_object_blur_touches_object_pixels_only():
    label = torch.zeros(1, 12, 12, dtype=torch.long)
    label[0, 3:9, 3:9] = 2  # an object
    label[0, 2, 3:9] = 255  # its void band
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 3, 12, 12))).to(torch.uint8)
    out = blur(x, label, 2.0, "objects")
    whole = blur(x, label, 2.0, "image")
    mask = object_mask(label)[:, 0]  # (1, H, W)
    assert mask.sum() == 36
    assert torch.equal(out.permute(1, 0, 2, 3)[:, ~mask], x.float().permute(1, 0, 2, 3)[:, ~mask])
    torch.testing.assert_close(out.permute(1, 0, 2, 3)[:, mask], whole.permute(1, 0, 2, 3)[:, mask])
    assert not torch.equal(out, x.float())
    with pytest.raises(ValueError, match="^mode:"):
        blur(x, label, 2.0, "background")


def test_object_mask_excludes_every_background_id_and_ignore():
    label = torch.tensor([[[0, 1, 2, 255]]])
    assert object_mask(label, background=(0, 1)).tolist() == [[[[False, False, True, False]]]]
