"""Mixing inside a training batch: SegMix's co-occurrence blending (SourceSep-CM) and the
Mixup / CutMix baselines.

    g = torch.Generator(device=image.device).manual_seed(seed)
    cooc = torch.as_tensor(cooc_np, device=image.device)        # (N, N), IJCV Algorithm 1
    ids = torch.as_tensor(VOC.object_ids, device=image.device)  # (N,) label id of each row
    mixed, dominant, phantom, delta = cooccurrence_mix(image, label, cooc, ids, 1.0, 3, g)
    loss, terms = stage1_loss(model(mixed), dominant, phantom, delta)          # trainer.losses

    mixed, label_a, label_b, lam = mixup(image, label, 1.0, g)
    loss, terms = mixup_loss(model(mixed), label_a, label_b, lam)             # trainer.losses
    mixed, mixed_label, box, lam, partner = cutmix(image, label, 1.0, g)       # plain CE after

A batch is ``image`` (B, 3, H, W), float or uint8, and ``label`` (B, H, W) int64 with
``ignore_index`` (255) for unlabelled pixels. Blended images come back as floating point (uint8
is converted to float32); CutMix copies pixels and keeps the dtype.

Randomness (STYLE 7): every draw comes from ``generator``, so one seed reproduces a batch. Draws
are made on the generator's device and moved to the batch's device; pass a generator on the
batch's device (and ``cooc`` / ``object_ids`` as tensors already there) and nothing here waits
for the device. The order of the draws is part of the contract (the tests replay it):

* ``cooccurrence_mix``: δ ~ Beta(α, α) (only if α > 0), then the (B, B) tie-break keys;
* ``mixup``: λ (only if α > 0), then the partner permutation;
* ``cutmix``: λ (only if α > 0), then the partner permutation, then the box centre x, y.

Pairing rules of Algorithm 2 that the paper leaves open, all **(ours)**:

* m = k is never a candidate (the printed ``argmax`` over a zero-initialised score could pick k
  itself when every score is 0).
* Ties: among the samples m ≠ k with the highest score, one is chosen uniformly at random
  (key ``u[k, m] ~ U[0, 1)``, the largest key wins), not the first index. Scores are integer
  counts, so ties are common (two images of the same classes); taking the first index would
  send every such k to the lowest-indexed sample and shrink the set of phantoms in a batch.
* The fallback is the same rule: when k or every other sample has no object class, or all
  candidates score 0, all m ≠ k tie at 0 and m* is uniform over them (METHOD.md).
* A batch of one has no m ≠ k: the sample pairs with itself (Eq. 1 then returns it unchanged).
* ``num_categories[k] = |U_k| + |U_m*|`` for every chosen pair, also a fallback one (the text:
  "total number of unique semantic categories in the chosen pair"; the printed list stays 0
  for non-candidates).
* δ = 0.9 applies to that pair only (the printed step 30 overwrites δ for the rest of the loop).
* Step 19 prints ``C[M-unique[i]][K-unique[i]]``; the second index is read as ``[j]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


LABEL_VALUES = 256  # label maps are uint8 ids 0..255 (blendgen.datasets.classes), stored here as int64
GAMMA_DELTA = 0.9  # δ for a pair over the category threshold γ (IJCV Table 11, "γ-thres")


# -- random draws ------------------------------------------------------------------------------


def sample_beta(alpha: float, generator: torch.Generator) -> Tensor:
    """One draw of Beta(α, α), a 0-d float64 tensor on the generator's device (α > 0).

    Beta(α, α) is the first coordinate of Dirichlet(α, α); torch's sampler takes a generator,
    which ``torch.distributions.Beta`` does not."""
    if alpha <= 0:
        raise ValueError(f"alpha: Beta(α, α) needs α > 0, got {alpha}")
    concentration = torch.full((2,), float(alpha), dtype=torch.float64, device=generator.device)
    return torch._sample_dirichlet(concentration, generator=generator)[0]


def _mixing_weight(alpha: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """δ (or λ) for a whole batch: Beta(α, α) if α > 0 else 1 (Algorithm 2 steps 1-5), 0-d float64."""
    if alpha < 0:
        raise ValueError(f"alpha: must be >= 0, got {alpha}")
    if alpha == 0:
        return torch.ones((), dtype=torch.float64, device=device)
    return sample_beta(alpha, generator).to(device)


def _randperm(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


# -- co-occurrence blending (IJCV Algorithm 2) ----------------------------------------------


def class_presence(label: Tensor, object_ids: Tensor | Sequence[int], ignore_index: int = 255) -> Tensor:
    """Which object classes occur in each label map: (B, H, W) -> (B, N) bool.

    Column r is label id ``object_ids[r]`` (the co-occurrence matrix's row order,
    ``ClassSet.object_ids``). Background and ``ignore_index`` count for nothing: Algorithm 2
    step 14 removes them before comparing class sets. Label values must lie in 0..255 (uint8
    label maps); another value raises on CPU and trips a device assert on CUDA."""
    ids = _object_ids(object_ids, ignore_index, label.device)  # (N,)
    b = label.shape[0]
    values = label.reshape(b, -1)  # (B, H*W)
    values = values if values.dtype == torch.long else values.long()
    # One pass over the pixels: mark every label value present, then keep the object columns.
    seen = torch.zeros((b, LABEL_VALUES), dtype=torch.bool, device=label.device)  # (B, 256)
    seen.scatter_(1, values, True)
    if 0 <= ignore_index < LABEL_VALUES:  # an ignore id among tensor object_ids: never present
        seen[:, ignore_index] = False
    return seen[:, ids]  # (B, N)


def _object_ids(object_ids: Tensor | Sequence[int], ignore_index: int, device: torch.device) -> Tensor:
    if isinstance(object_ids, Tensor):  # trusted as is: checking its values would sync a device
        if object_ids.dim() != 1:
            raise ValueError(f"object_ids: expected a 1-D tensor, got shape {tuple(object_ids.shape)}")
        return object_ids.to(device=device, dtype=torch.long)
    ids = [int(i) for i in object_ids]
    if any(not 0 <= i < LABEL_VALUES for i in ids) or len(set(ids)) != len(ids) or ignore_index in ids:
        raise ValueError(f"object_ids: expected unique label ids in 0..{LABEL_VALUES - 1} other than "
                         f"ignore_index {ignore_index}, got {ids}")
    return torch.tensor(ids, dtype=torch.long, device=device)


def cooccurrence_pairing(
    presence: Tensor, cooc: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Each sample's phantom partner m* and the pair's category count (Algorithm 2 steps 7-28).

    ``presence`` (B, N) bool from :func:`class_presence`, ``cooc`` (N, N) non-negative counts.
    Returns ``partner`` (B,) long and ``num_categories`` (B,) long = |U_k| + |U_m*|.

    The loops over k and m become one product: score[k, m] = Σ_{i∈U_m} Σ_{j∈U_k} C[i, j]
    (step 19) = (P C Pᵀ)[m, k] (= S[k, m] for the symmetric C of Algorithm 1), which is 0
    whenever either set is empty, as the printed algorithm leaves non-candidates (step 14).
    Ties and fallbacks: see the module docstring. One (B, B) U[0, 1) draw is made from
    ``generator`` whatever the batch holds."""
    b, n = presence.shape
    if cooc.shape != (n, n):
        raise ValueError(f"cooc: expected shape ({n}, {n}) for {n} object classes, got {tuple(cooc.shape)}")
    device = presence.device
    # float64 keeps integer sums exact (< 2**53), so equal class sets tie exactly. Broadcast
    # sums, not matmul: at these sizes a CPU float64 matmul chain took ~8 ms, these ~0.06 ms.
    p = presence.to(torch.float64)  # (B, N)
    c = cooc.to(device=device, dtype=torch.float64)  # (N, N)
    row_sums = (p[:, :, None] * c[None]).sum(dim=1)  # (B, N): [m, j] = Σ_{i∈U_m} C[i, j]
    scores = (p[:, None, :] * row_sums[None, :, :]).sum(dim=2)  # (B, B): [k, m] = Σ_{j∈U_k} [m, j]
    self_pair = torch.eye(b, dtype=torch.bool, device=device)
    scores = scores.masked_fill(self_pair, -math.inf)  # m ≠ k (ours); B = 1 keeps only k itself
    tied = scores == scores.amax(dim=1, keepdim=True)  # (B, B) the maxima of each row
    keys = torch.rand((b, b), generator=generator, device=generator.device).to(device)  # (B, B)
    partner = torch.where(tied, keys, -1.0).argmax(dim=1)  # (B,) random among the maxima (ours)
    counts = presence.sum(dim=1)  # (B,) |U_k|
    num_categories = counts + counts[partner]  # (B,) step 23, for the chosen pair
    return partner, num_categories


def blend(image: Tensor, partner: Tensor, delta: Tensor) -> Tensor:
    """Eq. 1 per sample: I'_k = δ_k·I_k + (1-δ_k)·I_m*   (B, C, H, W) -> (B, C, H, W) float."""
    image = image if image.is_floating_point() else image.float()
    d = delta.to(image.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    mixed = image[partner].mul_(1 - d)  # (B, C, H, W) phantom share, a fresh tensor
    return mixed.add_(d * image)  # = δ·I_k + (1-δ)·I_m* bit for bit (+ commutes exactly)


def cooccurrence_mix(
    image: Tensor,
    label: Tensor,
    cooc_matrix: Tensor,
    object_ids: Tensor | Sequence[int],
    alpha: float,
    gamma: float,
    generator: torch.Generator,
    ignore_index: int = 255,
    presence: Tensor | None = None,
    delta_min: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SourceSep-CM: blend each sample with its most co-occurring batch mate (IJCV Algorithm 2).

    Returns ``(mixed_image, dominant_label, phantom_label, delta)``: the blended images
    (B, 3, H, W), the targets G_k = label[k] and G_m* = label[m*] (B, H, W), and each sample's
    weight δ_k (B,) float32 on its own image, the δ of ``trainer.losses.stage1_loss``.

    δ ~ Beta(α, α) once per batch (α = 0: δ = 1); the dominant gets the larger share,
    max(δ, 1-δ) (ours: the text "assigns more weight on the dominant"). A pair with more than
    ``gamma`` object classes in all gets δ = 0.9 ("γ-thres", IJCV Table 11; also when α = 0, as
    printed); ``gamma = math.inf`` turns this off.

    ``delta_min`` (ours, None = the papers' reading): a floor on the dominant's share. The folded
    δ in [0.5, 1] is mapped linearly onto [delta_min, 1], δ = delta_min + (1 - delta_min)·(2δ - 1),
    so with α = 1 δ is uniform on [delta_min, 1] (as C_fb's U[0.7, 1]); delta_min = 0.5 gives the
    papers' δ bit for bit. It uses the same single draw, so the draw order does not change. Why: at
    δ near 0.5 two samples that picked each other are near-identical inputs with swapped targets.
    The γ-thres δ = 0.9 still replaces it for pairs over γ.

    ``presence`` (B, N) bool: the class sets to pair by, when they are not those of ``label``
    (saliency: the label is a mask, the classes come from pseudo labels, IJCV Sect. 4.5)."""
    _check_batch(image, label)
    if presence is None:
        presence = class_presence(label, object_ids, ignore_index)  # (B, N)
    if delta_min is not None and not 0.5 <= delta_min <= 1:
        raise ValueError(f"delta_min: expected in [0.5, 1], got {delta_min}")
    delta = _mixing_weight(alpha, generator, image.device)  # () steps 1-5
    delta = torch.maximum(delta, 1 - delta)  # () float64, dominant >= 1/2
    if delta_min is not None:  # (ours) [0.5, 1] -> [delta_min, 1], in float64 before the cast
        delta = delta_min + (1 - delta_min) * (2 * delta - 1)
    delta = delta.to(torch.float32)  # ()
    partner, num_categories = cooccurrence_pairing(presence, cooc_matrix, generator)  # (B,), (B,)
    over = num_categories > gamma  # (B,) steps 29-31, per pair
    delta = torch.where(over, GAMMA_DELTA, delta)  # (B,) float32
    mixed = blend(image, partner, delta)  # (B, 3, H, W) step 32
    return mixed, label, label[partner], delta  # step 33: dominant and phantom targets


def _check_batch(image: Tensor, label: Tensor) -> None:
    if image.dim() != 4 or label.dim() != 3:
        raise ValueError(f"expected image (B, C, H, W) and label (B, H, W), got {tuple(image.shape)} "
                         f"and {tuple(label.shape)}")
    if image.shape[0] != label.shape[0] or image.shape[2:] != label.shape[1:]:
        raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in batch or size")
    if image.shape[0] == 0:
        raise ValueError("image: empty batch")


# -- Mixup (Zhang et al., ICLR 2018) ---------------------------------------------------------


def mixup(
    image: Tensor, label: Tensor, alpha: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mixup for segmentation: x = λ·x_a + (1-λ)·x_b with b a random permutation of the batch.

    λ ~ Beta(α, α) once per batch as in the paper (α = 0: λ = 1, no mixing), not folded to
    >= 1/2. Returns ``(mixed_image, label_a, label_b, lam)``, ``lam`` (B,) float32 (all equal),
    for ``trainer.losses.mixup_loss``."""
    _check_batch(image, label)
    b = image.shape[0]
    lam = _mixing_weight(alpha, generator, image.device).to(torch.float32).repeat(b)  # (B,)
    partner = _randperm(b, generator, image.device)  # (B,)
    return blend(image, partner, lam), label, label[partner], lam


# -- CutMix (Yun et al., ICCV 2019) ----------------------------------------------------------


def cutmix_box(lam: Tensor, height: int, width: int, generator: torch.Generator) -> Tensor:
    """CutMix's box for mixing ratio λ: (4,) long ``(x1, y1, x2, y2)``, half-open, on λ's device.

    As in the CutMix paper: size w = ⌊W·√(1-λ)⌋, h = ⌊H·√(1-λ)⌋, so its area ratio is ≈ 1-λ;
    centre uniform over the pixels, then clipped to the image (a clipped box is smaller)."""
    cut = torch.sqrt(1 - lam.to(torch.float64))  # ()
    w, h = (width * cut).floor().long(), (height * cut).floor().long()  # (), ()
    cx = torch.randint(0, width, (), generator=generator, device=generator.device).to(lam.device)
    cy = torch.randint(0, height, (), generator=generator, device=generator.device).to(lam.device)
    x1, y1 = cx - w // 2, cy - h // 2  # () unclipped top-left corner
    return torch.stack([
        x1.clamp(0, width), y1.clamp(0, height), (x1 + w).clamp(0, width), (y1 + h).clamp(0, height),
    ])  # (4,) x1, y1, x2, y2


def cutmix(
    image: Tensor, label: Tensor, alpha: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """CutMix for segmentation: paste a box of the partner's image and of its label map.

    λ ~ Beta(α, α), one λ, one box and one permutation per batch as in the paper's algorithm
    (α = 0: λ = 1, an empty box). The label is pasted pixel for pixel, so the loss is plain CE
    on ``mixed_label``. Returns ``(mixed_image, mixed_label, box, lam, partner)``: ``box`` (4,)
    long ``(x1, y1, x2, y2)`` half-open, ``lam`` (B,) float32 the share of each image's own
    pixels after clipping (1 - box area / (H·W), as the CutMix paper adjusts λ), ``partner`` (B,)."""
    _check_batch(image, label)
    b, _, height, width = image.shape
    device = image.device
    lam = _mixing_weight(alpha, generator, device)  # ()
    partner = _randperm(b, generator, device)  # (B,)
    box = cutmix_box(lam, height, width, generator)  # (4,)
    xs = torch.arange(width, device=device)  # (W,)
    ys = torch.arange(height, device=device)  # (H,)
    inside = ((ys >= box[1]) & (ys < box[3]))[:, None] & ((xs >= box[0]) & (xs < box[2]))[None, :]  # (H, W)
    mixed_image = torch.where(inside, image[partner], image)  # (B, C, H, W)
    mixed_label = torch.where(inside, label[partner], label)  # (B, H, W)
    area = (box[2] - box[0]) * (box[3] - box[1])  # ()
    own = (1 - area / (height * width)).to(torch.float32).repeat(b)  # (B,)
    return mixed_image, mixed_label, box, own, partner
