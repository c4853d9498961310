"""The two training objectives of SegMix (IJCV 2023 Eqs. 4-5, BMVC 2020 Eqs. 3-4), and plain CE.

    loss, terms = stage1_loss(model(x), label, phantom, delta)   # blended images, stage 1
    loss, terms = stage2_loss(model(x), label)                   # standard images, stage 2
    loss, terms = ce_loss(model(x), label)                       # single-head baselines

Every loss takes the model's output dict ({"t", "p", "ss"}: logits (B, K, H, W), already upsampled
to the label size) and int64 label maps (B, H, W) with ``ignore_index`` for unlabelled pixels, and
returns the scalar loss and a dict of floats for logging (fetched from the device in one sync).

Cross-entropy is averaged per image first, over that image's labelled pixels, then over the batch
(ours): stage 1 weights each image by its own δ, which a batch-wide pixel average cannot do. An
image with no labelled pixel (all ``ignore_index``) contributes 0, never NaN; a blended sample
whose phantom is absent (standard sample: phantom all ignore, δ = 1) contributes no phantom term.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def per_image_ce(logits: Tensor, target: Tensor, ignore_index: int = 255, weight: Tensor | None = None) -> Tensor:
    """(B, K, H, W) logits, (B, H, W) target -> (B,) mean CE over each image's labelled pixels.

    ``weight`` (K,): a weight per class (``--class-weights``, ours); each image's CE is then the
    weighted mean, Σ w[y]·CE / Σ w[y] over its labelled pixels, as torch's weighted "mean"."""
    pixel = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="none")
    labelled = target != ignore_index  # (B, H, W)
    if weight is None:
        norm = labelled.sum(dim=(1, 2)).float()  # (B,)
    else:
        norm = (weight[target.masked_fill(~labelled, 0)] * labelled).sum(dim=(1, 2))  # (B,)
    return pixel.sum(dim=(1, 2)) / norm.clamp(min=1e-12)  # (B,), 0 for an all-ignore image


def median_frequency_weights(pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus 2015; SegNet's CamVid recipe), ours here:
    freq_c = pixels of class c / pixels of the images that hold c, w_c = median(freq) / freq_c.
    A class absent from the data gets weight 0 (it has no pixel to weigh)."""
    pixels, image_pixels = np.asarray(pixels, np.float64), np.asarray(image_pixels, np.float64)
    present = pixels > 0
    freq = np.where(present, pixels / np.maximum(image_pixels, 1), 0.0)
    if not present.any():
        return np.zeros_like(freq)
    return np.where(present, np.median(freq[present]) / np.where(present, freq, 1.0), 0.0)


def stage1_loss(
    out: dict[str, Tensor],
    label: Tensor,
    phantom: Tensor,
    delta: Tensor,
    ignore_index: int = 255,
    weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """L1 = CE(S_ss, G_a) + δ·CE(S_t, G_a) + (1-δ)·CE(S_p, G_b)   (IJCV Eq. 4).

    δ (B,) is each sample's blend weight of the dominant: the network is penalised most on the
    dominant predictions and less on the phantom. Without an SSH ("ss" absent, the "w/o SSH"
    ablation) the first term is dropped. The logged "ce_*" terms are unweighted batch means."""
    delta = delta.to(device=label.device, dtype=torch.float32)  # (B,)
    ce_t = per_image_ce(out["t"], label, ignore_index, weight)  # (B,)
    ce_p = per_image_ce(out["p"], phantom, ignore_index, weight)  # (B,)
    per_image = delta * ce_t + (1.0 - delta) * ce_p  # (B,)
    terms = {"ce_t": ce_t.mean(), "ce_p": ce_p.mean()}
    if "ss" in out:
        ce_ss = per_image_ce(out["ss"], label, ignore_index, weight)  # (B,)
        per_image = per_image + ce_ss
        terms["ce_ss"] = ce_ss.mean()
    loss = per_image.mean()
    return loss, _as_floats(terms, loss)


def phantom_activation(s_p: Tensor, eps: float = 1e-6) -> Tensor:
    """ℓ_PPA per image: log(ε + Σ_{c,h,w} ReLU(S_p))   (IJCV Eq. 5), (B, K, H, W) -> (B,).

    The log balances the scale of the summed activation with the CE term (IJCV 3.3); ε keeps it
    finite once the phantom branch is fully suppressed, and the sum is per image (both ours)."""
    return torch.log(eps + F.relu(s_p.float()).sum(dim=(1, 2, 3)))


def stage2_loss(
    out: dict[str, Tensor],
    label: Tensor,
    ignore_index: int = 255,
    eps: float = 1e-6,
    weight: float = 1.0,
    class_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """L2 = CE(S_t, G) + ℓ_PPA   (IJCV Eq. 5): fine-tune on standard images while pushing the
    phantom branch, which has no target there, towards zero activation. ℓ_PPA is averaged over
    the batch (ours); ``weight`` scales it (ours, 1 = the paper; 0 = plain CE, the control of
    docs/experiments.md). The logged "ppa" is unweighted."""
    ce_t = per_image_ce(out["t"], label, ignore_index, class_weight).mean()
    ppa = phantom_activation(out["p"], eps).mean()
    loss = ce_t + weight * ppa if weight else ce_t
    return loss, _as_floats({"ce_t": ce_t, "ppa": ppa}, loss)


def ce_loss(
    out: dict[str, Tensor], label: Tensor, ignore_index: int = 255, weight: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Plain CE on S_t: standard DeepLabv3 training and CutMix (whose pasted labels are hard)."""
    loss = per_image_ce(out["t"], label, ignore_index, weight).mean()
    return loss, _as_floats({"ce_t": loss}, loss)


def mixup_loss(
    out: dict[str, Tensor],
    label: Tensor,
    phantom: Tensor,
    delta: Tensor,
    ignore_index: int = 255,
    weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The Mixup baseline's loss on a single head: δ·CE(S_t, G_a) + (1-δ)·CE(S_t, G_b)
    (Zhang et al. 2018, applied per pixel), with the same per-image averaging as above."""
    delta = delta.to(device=label.device, dtype=torch.float32)  # (B,)
    ce_a = per_image_ce(out["t"], label, ignore_index, weight)  # (B,)
    ce_b = per_image_ce(out["t"], phantom, ignore_index, weight)  # (B,)
    loss = (delta * ce_a + (1.0 - delta) * ce_b).mean()
    return loss, _as_floats({"ce_t": ce_a.mean(), "ce_p": ce_b.mean()}, loss)


def _as_floats(terms: dict[str, Tensor], loss: Tensor) -> dict[str, float]:
    """Detach and fetch all logged terms with one device sync."""
    names = [*terms, "loss"]
    values = torch.stack([t.detach().float() for t in (*terms.values(), loss)]).tolist()
    return dict(zip(names, values))
