"""The methods of the papers' comparison: what each trains on, how it mixes a batch, what it minimises.

    trainer run --shards out/ --method sourcesep-cm --alpha 1 --gamma 3
    trainer run --shards out/ --method mixup

| method | network | stage 1 data, mixing, loss | stage 2 |
| --- | --- | --- | --- |
| ``sourcesep-cc`` | two-branch | ``out/mixed`` (offline C_fb, BMVC 3.1), L1 | denoising on ``out/train``, L2 |
| ``sourcesep-cm`` | two-branch | ``out/train`` blended in the batch by co-occurrence (IJCV Alg. 2), L1 | as above |
| ``deeplabv3`` | single head | ``out/train``, CE | none |
| ``mixup`` | single head | ``out/train``, Mixup (Zhang et al. 2018), λ·CE(y_a) + (1-λ)·CE(y_b) | none |
| ``cutmix`` | single head | ``out/train``, CutMix (Yun et al. 2019), CE on the pasted label map | none |
| ``mixup-cm`` | single head | ``out/train``, Mixup whose partner is the most co-occurring batch mate (IJCV Table 10), Mixup's loss | none |

L1 and L2 are IJCV Eqs. 4-5 (:mod:`trainer.losses`). How long each stage is: ``TrainConfig.stage_budget``
(``budget`` steps: equal optimizer steps; epochs: the papers' passes over each method's own data).

Online mixing runs on the device after the batch is there (:func:`batch_mixer`): every crop of a
batch has the same size, so whole images can be blended, and padded label pixels stay 255 in both
label maps. Each batch's draws come from a generator seeded by ``(seed, rank, stage, epoch,
batch)`` (:func:`batch_generator`), so a resumed run mixes the batches it redoes exactly as the
interrupted one did, whatever the global RNG holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial, update_wrapper
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from blendgen.shards.directory import ShardDir

from .config import TrainConfig
from .losses import ce_loss, mixup_loss, stage1_loss, stage2_loss
from .mixing import class_presence, cooccurrence_mix, cutmix, mixup

# (model outputs, batch, ignore index) -> (loss, logged terms)
Criterion = Callable[[dict, dict, int], tuple[Tensor, dict]]
# (images (B, 3, H, W) uint8, batch, generator) -> (mixed images uint8, batch with its targets)
Mixer = Callable[[Tensor, dict, torch.Generator], tuple[Tensor, dict]]


# -- data -----------------------------------------------------------------------------------------
def stage_dir(config: TrainConfig, stage: int) -> Path:
    """The shard directory a stage trains on: SourceSep-CC's stage 1 reads the offline blends
    (``--mixed``, default SHARDS/mixed); everything else reads the standard images SHARDS/train."""
    if stage == 1 and config.method == "sourcesep-cc":
        return Path(config.mixed) if config.mixed is not None else Path(config.shards) / "mixed"
    return Path(config.shards) / "train"


def mixed_generation(shards: ShardDir) -> dict[str, str | None]:
    """What a run records of its offline blends: ``blendgen mix``'s strategy and δ spec."""
    generation = shards.manifest.get("generation", {})
    return {"mixed_strategy": generation.get("strategy"), "mixed_delta": generation.get("delta")}


# -- losses ---------------------------------------------------------------------------------------
def stage1_criterion(out: dict[str, Tensor], batch: dict, ignore_index: int,
                     class_weight: Tensor | None = None) -> tuple[Tensor, dict]:
    """IJCV Eq. 4 on blended samples, each with its own δ."""
    return stage1_loss(out, batch["label"], batch["phantom"], batch["delta"], ignore_index, class_weight)


def stage2_criterion(out: dict[str, Tensor], batch: dict, ignore_index: int, eps: float = 1e-6,
                     weight: float = 1.0, class_weight: Tensor | None = None) -> tuple[Tensor, dict]:
    """IJCV Eq. 5, the denoising stage on standard images; ``eps`` inside ℓ_PPA's log, ``weight``
    on ℓ_PPA (both ours)."""
    return stage2_loss(out, batch["label"], ignore_index, eps, weight, class_weight)


def ce_criterion(out: dict[str, Tensor], batch: dict, ignore_index: int,
                 class_weight: Tensor | None = None) -> tuple[Tensor, dict]:
    """Plain CE: DeepLabv3, and CutMix once its label maps are pasted."""
    return ce_loss(out, batch["label"], ignore_index, class_weight)


def mixup_criterion(out: dict[str, Tensor], batch: dict, ignore_index: int,
                    class_weight: Tensor | None = None) -> tuple[Tensor, dict]:
    """Mixup's λ·CE(y_a) + (1-λ)·CE(y_b); :func:`mix_mixup` put y_b in "phantom" and λ in "delta"."""
    return mixup_loss(out, batch["label"], batch["phantom"], batch["delta"], ignore_index, class_weight)


def criterion(method: str, stage: int, ppa_eps: float = 1e-6, ppa_weight: float = 1.0,
              class_weight: Tensor | None = None) -> Criterion:
    """The loss of ``method`` in ``stage``; ``class_weight`` (K,) weighs every CE term's pixels
    by their class (``--class-weights``, ours), None = the papers' unweighted CE."""
    if method in ("sourcesep-cc", "sourcesep-cm"):
        if stage == 1:
            base, options = stage1_criterion, {}
        else:
            base, options = stage2_criterion, {"eps": ppa_eps, "weight": ppa_weight}
    else:
        base, options = (mixup_criterion if method in ("mixup", "mixup-cm") else ce_criterion), {}
    if class_weight is not None:
        options["class_weight"] = class_weight
    return update_wrapper(partial(base, **options), base) if options else base


# -- mixing inside a batch ------------------------------------------------------------------------
def batch_generator(seed: int, rank: int, stage: int, epoch: int, batch: int, device: torch.device) -> torch.Generator:
    """The generator of one batch's mixing draws, on the batch's device (STYLE 7)."""
    state = np.random.SeedSequence([seed, rank, stage, epoch, batch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def to_pixels(image: Tensor) -> Tensor:
    """Blended float pixels back to uint8, rounded (ours): what ``normalize`` takes, and what
    SourceSep-CC's offline blends are too (``blendgen.generation.blend`` rounds before encoding)."""
    return image.round_().clamp_(0, 255).to(torch.uint8)


def stored_presence(classes: list[tuple[int, ...]], columns: dict[int, int], device: torch.device) -> Tensor:
    """(B, N) bool: the object classes of each sample's stored class set (batch["classes"]);
    ``columns`` maps a label id to its co-occurrence matrix column."""
    presence = torch.zeros(len(classes), len(columns), dtype=torch.bool)
    for k, ids in enumerate(classes):
        presence[k, [columns[c] for c in ids if c in columns]] = True
    return presence.to(device, non_blocking=True)


def mix_cooccurrence(x: Tensor, batch: dict, g: torch.Generator, *, cooc: Tensor, object_ids: Tensor,
                     alpha: float, gamma: float, rule: str, ignore_index: int,
                     class_columns: dict[int, int] | None = None, delta_min: float | None = None
                     ) -> tuple[Tensor, dict]:
    """SourceSep-CM: every sample becomes the dominant of a blend with its most co-occurring batch
    mate (IJCV Algorithm 2); targets G_k and G_m*, and each pair's δ, for the stage-1 loss.

    ``rule`` "thres" is Algorithm 2 (δ = 0.9 for a pair over γ, "γ-thres"); "skip" is Table 11's
    "max = γ" rows, which "do not blend images if the maximum threshold is exceeded" (IJCV 5.3):
    such a sample stays standard (δ = 1, no phantom target), as in a mixed shard.

    ``delta_min`` (ours, ``--delta-min``): δ mapped from [0.5, 1] onto [delta_min, 1]
    (:func:`trainer.mixing.cooccurrence_mix`); None = the papers' δ.

    ``class_columns`` (saliency, IJCV Sect. 4.5): pair by the samples' stored pseudo-label class
    sets instead of the classes in their label maps, which are masks there."""
    label = batch["label"]  # (B, H, W)
    if class_columns is not None:
        presence = stored_presence(batch["classes"], class_columns, x.device)  # (B, N)
        mixed, dominant, phantom, delta = cooccurrence_mix(x, label, cooc, object_ids, alpha, gamma, g, ignore_index,
                                                           presence=presence, delta_min=delta_min)
    elif rule == "thres":
        mixed, dominant, phantom, delta = cooccurrence_mix(x, label, cooc, object_ids, alpha, gamma, g, ignore_index,
                                                           delta_min=delta_min)
    else:
        mixed, dominant, phantom, delta = cooccurrence_mix(x, label, cooc, object_ids, alpha, math.inf, g, ignore_index,
                                                           delta_min=delta_min)
        categories = (class_presence(dominant, object_ids, ignore_index).sum(1)
                      + class_presence(phantom, object_ids, ignore_index).sum(1))  # (B,) |U_k| + |U_m*|
        over = categories > gamma  # (B,)
        mixed = torch.where(over.view(-1, 1, 1, 1), x.to(mixed.dtype), mixed)  # (B, 3, H, W)
        phantom = phantom.masked_fill(over.view(-1, 1, 1), ignore_index)  # (B, H, W)
        delta = torch.where(over, 1.0, delta)  # (B,)
    return to_pixels(mixed), {**batch, "label": dominant, "phantom": phantom, "delta": delta}


def mix_mixup(x: Tensor, batch: dict, g: torch.Generator, *, alpha: float) -> tuple[Tensor, dict]:
    """Mixup: λ·x_a + (1-λ)·x_b over a random permutation; y_b and λ ride in "phantom" and "delta"."""
    mixed, label_a, label_b, lam = mixup(x, batch["label"], alpha, g)
    return to_pixels(mixed), {**batch, "label": label_a, "phantom": label_b, "delta": lam}


def mix_cutmix(x: Tensor, batch: dict, g: torch.Generator, *, alpha: float) -> tuple[Tensor, dict]:
    """CutMix: a box of the partner's image and the same box of its label map (hard labels)."""
    mixed, mixed_label, _, _, _ = cutmix(x, batch["label"], alpha, g)
    return mixed, {**batch, "label": mixed_label}


def mix_mixup_cooccurrence(x: Tensor, batch: dict, g: torch.Generator, *, cooc: Tensor, object_ids: Tensor,
                           alpha: float, ignore_index: int, class_columns: dict[int, int] | None = None
                           ) -> tuple[Tensor, dict]:
    """IJCV Table 10's "Mixup + Co-occurrence": Algorithm 2's pairing (each sample with its most
    co-occurring batch mate) and blend, then Mixup's single-head loss λ·CE(y_k) + (1-λ)·CE(y_m*).
    No γ rule (ours: the table names none), and λ is Algorithm 2's, folded to the sample's side
    (max(λ, 1-λ), as in SourceSep-CM)."""
    presence = None if class_columns is None else stored_presence(batch["classes"], class_columns, x.device)
    mixed, dominant, phantom, lam = cooccurrence_mix(x, batch["label"], cooc, object_ids, alpha, math.inf, g,
                                                     ignore_index, presence=presence)
    return to_pixels(mixed), {**batch, "label": dominant, "phantom": phantom, "delta": lam}


def batch_mixer(config: TrainConfig, stage: int, shards: ShardDir, device: torch.device) -> Mixer | None:
    """The online mixing of a stage, or None (offline blends, standard images, denoising)."""
    if stage != 1 or config.method in ("sourcesep-cc", "deeplabv3"):
        return None
    if config.method == "mixup":
        return partial(mix_mixup, alpha=config.alpha)
    if config.method == "cutmix":
        return partial(mix_cutmix, alpha=config.alpha)
    cooc = shards.cooccurrence  # IJCV Algorithm 1, computed by build-clusters, carried by every manifest
    if cooc is None:
        raise ValueError(f"method: {config.method} needs a co-occurrence matrix; {shards.path}/manifest.json has none")
    # Saliency shards (blendgen pack --task saliency) pair by pseudo-label classes, a label space of their own.
    saliency = shards.manifest.get("pairing")
    object_ids = saliency["object_ids"] if saliency else shards.manifest["object_ids"]
    pairing = dict(cooc=torch.as_tensor(cooc, dtype=torch.float64, device=device),
                   object_ids=torch.as_tensor(object_ids, dtype=torch.long, device=device),
                   alpha=config.alpha, ignore_index=shards.classes.ignore_index)
    if saliency:
        if config.method == "sourcesep-cm" and config.gamma_rule == "skip":
            raise ValueError(f"gamma_rule: skip is not implemented for saliency shards ({shards.path}); use thres")
        pairing["class_columns"] = {int(c): r for r, c in enumerate(object_ids)}
    if config.method == "mixup-cm":
        return partial(mix_mixup_cooccurrence, **pairing)
    return partial(mix_cooccurrence, **pairing, gamma=config.gamma, rule=config.gamma_rule, delta_min=config.delta_min)
