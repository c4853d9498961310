"""Salient object detection (IJCV Sect. 4.5, Table 7): max F_β, mean F_β and MAE, their curves,
the evaluation pass and the report's Table 7.

    meter = SaliencyMeter()
    for batch in loader:
        meter.update(saliency_map(model(normalize(x)), "t"), batch["label"])  # (B, H, W) in [0, 1]
    meter.reduce_from_all_processes()
    scores = meter.compute()      # {"max_fbeta", "mean_fbeta", "mae", "precision", "recall", "fbeta", ...}

A saliency split is a shard directory of two classes, background (0) and salient (1), written by
``blendgen pack --task saliency`` (its manifest says ``"task": "saliency"``). The network is the
segmentation network with two output classes; its saliency map is the softmax probability of
"salient".

Definitions (the saliency literature's, β² = 0.3 "to weigh precision more than recall"; the
conventions the papers leave open are marked **(ours)**, docs/saliency.md):

* The map S ∈ [0, 1] is quantised to q = round(255·S) (as a saved 8-bit saliency map would be);
  threshold i ∈ {0, ..., 255} predicts "salient" where q ≥ i (256 thresholds; i = 0 takes every pixel).
* Per image and threshold: precision P = TP / (TP + FP), recall R = TP / (TP + FN). **(ours)** A
  ratio 0/0 counts as 1: an image without salient pixels has R = 1 (nothing to find, nothing
  missed), a threshold that predicts nothing has P = 1 (no false alarm). So an empty ground truth
  scores F = 1 at the thresholds where nothing is predicted and F = 0 wherever anything is.
* P and R are averaged over the images at each threshold; the dataset's F_β curve is
  F_β(i) = (1 + β²)·P̄(i)·R̄(i) / (β²·P̄(i) + R̄(i)) (0 where P̄ = R̄ = 0). **max F_β** is its maximum
  over the 256 thresholds (Table 7's F_β), **mean F_β** its mean over them.
* **MAE** = the mean over images of mean_pixels |S − G|, on the unquantised S.
* Pixels labelled 255 (ignore: padding of batched full images) count for nothing; an image
  without any labelled pixel is skipped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from .precision import Precision, resolve_precision

BETA2 = 0.3  # β² of the saliency F-measure (Achanta et al. 2009), as the SOD benchmarks use
LEVELS = 256  # thresholds 0..255 on the 8-bit map
TASK = "saliency"  # the manifest's "task" of a saliency shard directory
SALIENT = 1  # label id of "salient"; 0 is background


class SaliencyMeter:
    """Sums over images of the per-threshold precision and recall, and of the per-image MAE.

    ``update(saliency, target)``: saliency (B, H, W) float in [0, 1], target (B, H, W) integer
    0 / 1 with ``ignore_index`` for unlabelled pixels. The sums live on the device of the first
    update; ``reduce_from_all_processes`` adds them over DDP ranks; ``compute`` gives the scores.
    """

    def __init__(self, ignore_index: int = 255, beta2: float = BETA2) -> None:
        if beta2 <= 0:
            raise ValueError(f"beta2: expected > 0, got {beta2}")
        self.ignore_index = ignore_index
        self.beta2 = beta2
        self.precision_sum = torch.zeros(LEVELS, dtype=torch.float64)  # (256,) Σ_images P(i)
        self.recall_sum = torch.zeros(LEVELS, dtype=torch.float64)  # (256,) Σ_images R(i)
        self.stats = torch.zeros(2, dtype=torch.float64)  # Σ_images MAE, images

    def update(self, saliency: Tensor, target: Tensor) -> None:
        if saliency.shape != target.shape or saliency.dim() != 3:
            raise ValueError(f"saliency {tuple(saliency.shape)} and target {tuple(target.shape)}: expected the "
                             f"same (B, H, W)")
        target = target.to(saliency.device).long()
        valid = target != self.ignore_index  # (B, H, W)
        bad = valid & (target != 0) & (target != SALIENT)
        if bad.any():
            raise ValueError(f"target: saliency labels are 0 (background) and 1 (salient), got "
                             f"{sorted(set(target[bad].unique().tolist()))[:5]}")
        s = saliency.detach().double().clamp(0, 1)  # (B, H, W)
        b = s.shape[0]
        positive = valid & (target == SALIENT)  # (B, H, W)
        negative = valid & (target == 0)
        q = (s * (LEVELS - 1)).round().long()  # (B, H, W) 0..255
        bins = torch.arange(b, device=s.device).view(b, 1, 1) * LEVELS + q  # (B, H, W) image-major bins
        tp = _count_at_or_above(bins[positive], b)  # (B, 256) salient pixels with q >= i
        fp = _count_at_or_above(bins[negative], b)  # (B, 256) background pixels with q >= i
        gt = positive.flatten(1).sum(1, dtype=torch.float64)[:, None]  # (B, 1)
        precision = _ratio(tp, tp + fp)  # (B, 256), 0/0 = 1 (ours)
        recall = _ratio(tp, gt.expand_as(tp))
        pixels = valid.flatten(1).sum(1, dtype=torch.float64)  # (B,)
        error = torch.where(valid, (s - target.clamp(max=1).double()).abs(), 0).flatten(1).sum(1)  # (B,)
        scored = pixels > 0  # an image padded away entirely says nothing
        self._to(s.device)
        self.precision_sum += precision[scored].sum(0)
        self.recall_sum += recall[scored].sum(0)
        self.stats += torch.stack([(error[scored] / pixels[scored]).sum(), scored.sum(dtype=torch.float64)])

    def _to(self, device: torch.device) -> None:
        if self.stats.device != device:
            self.precision_sum, self.recall_sum, self.stats = (
                t.to(device) for t in (self.precision_sum, self.recall_sum, self.stats))

    def reduce_from_all_processes(self) -> None:
        if dist.is_available() and dist.is_initialized():
            for t in (self.precision_sum, self.recall_sum, self.stats):
                dist.all_reduce(t)

    @property
    def images(self) -> int:
        return int(self.stats[1].item())

    def compute(self) -> dict:
        """Scores and curves; NaN scores (and empty curves) when no image was counted."""
        n = self.images
        if n == 0:
            nan = float("nan")
            return {"max_fbeta": nan, "mean_fbeta": nan, "mae": nan, "best_threshold": None, "images": 0,
                    "beta2": self.beta2, "precision": [], "recall": [], "fbeta": []}
        p = (self.precision_sum / n).cpu()  # (256,) P̄(i)
        r = (self.recall_sum / n).cpu()  # (256,) R̄(i)
        f = fbeta(p, r, self.beta2)  # (256,)
        best = int(f.argmax())
        return {"max_fbeta": float(f[best]), "mean_fbeta": float(f.mean()), "mae": float(self.stats[0].cpu() / n),
                "best_threshold": best, "images": n, "beta2": self.beta2,
                "precision": p.tolist(), "recall": r.tolist(), "fbeta": f.tolist()}


def _count_at_or_above(bins: Tensor, b: int) -> Tensor:
    """(M,) image-major bins -> (B, 256) float64 pixels per image with level >= i, by a reverse cumsum."""
    hist = torch.bincount(bins, minlength=b * LEVELS).view(b, LEVELS).double()  # (B, 256)
    return hist.flip(1).cumsum(1).flip(1)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0/0 = 1 (ours, see the module docstring)."""
    return torch.where(den > 0, num / den.clamp(min=1), 1.0)


def fbeta(precision: Tensor, recall: Tensor, beta2: float = BETA2) -> Tensor:
    """F_β = (1 + β²)·P·R / (β²·P + R), 0 where P = R = 0."""
    den = beta2 * precision + recall
    return torch.where(den > 0, (1 + beta2) * precision * recall / den.clamp(min=1e-300), 0.0)


def saliency_map(logits: Tensor) -> Tensor:
    """(B, 2, H, W) logits of background / salient -> (B, H, W) P(salient) in [0, 1]."""
    if logits.dim() != 4 or logits.shape[1] != 2:
        raise ValueError(f"saliency needs a two-class network (background, salient); its output is "
                         f"{tuple(logits.shape)}")
    return logits.float().softmax(1)[:, SALIENT]


def is_saliency(manifest: dict) -> bool:
    """Whether a shard directory holds saliency masks (``blendgen pack --task saliency`` wrote it)."""
    return manifest.get("task") == TASK


def wants_saliency(task: str, config) -> bool:
    """``trainer eval --task``: saliency when asked, or (auto) when the split's manifest says so."""
    if task != "auto":
        return task == TASK
    from blendgen.shards.directory import ShardDir
    from blendgen.shards.schema import ShardError

    try:
        return is_saliency(ShardDir.open(Path(config.shards) / config.split).manifest)
    except ShardError:
        return False  # evaluate_checkpoint reports the missing or broken split


# -- the evaluation pass --------------------------------------------------------------------------
@torch.inference_mode()
def evaluate_saliency(model: nn.Module, loader, d, head: str = "t", precision: Precision | None = None,
                      progress: bool = False, cm=None) -> SaliencyMeter:
    """One pass over ``loader`` (a saliency split), summed over ranks; also fills the confusion
    matrix ``cm`` of the same head's argmax when given. Leaves the model in eval mode."""
    from .model import prediction
    from .transforms import normalize

    model.eval()
    meter = SaliencyMeter()
    precision = precision or resolve_precision("none", d.device)
    for batch in tqdm(loader, desc="saliency", disable=not (progress and d.is_main), leave=False):
        x = precision.prepare_input(batch["image"].to(d.device, non_blocking=True))  # (B, 3, H, W) uint8
        with precision.autocast(d.device):
            out = model(normalize(x))
        logits = prediction(out, head)  # (B, 2, H, W)
        label = batch["label"].to(d.device, non_blocking=True)  # (B, H, W)
        meter.update(saliency_map(logits), label)
        if cm is not None:
            cm.update(label, logits.argmax(1))
    meter.reduce_from_all_processes()
    if cm is not None:
        cm.reduce_from_all_processes()
    return meter


def saliency_report(meter: SaliencyMeter, seconds: float | None = None) -> dict:
    """The report.json section "saliency": scores, and the curves for the picture."""
    scores = meter.compute()
    report = {k: scores[k] for k in ("max_fbeta", "mean_fbeta", "mae", "best_threshold", "images", "beta2")}
    report["thresholds"] = LEVELS
    report["curves"] = {k: [round(v, 6) for v in scores[k]] for k in ("precision", "recall", "fbeta")}
    if seconds is not None:
        report["time_s"] = round(seconds, 2)
    return report


def write_saliency(directory: Path, report: dict, title: str = "") -> Path:
    """saliency.json (the section alone) and saliency.png (PR and F_β-threshold curves)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "saliency.json").write_text(json.dumps({"saliency": report}, indent=2) + "\n")
    path = directory / "saliency.png"
    draw_saliency_curves(report, path, title)
    return path


def draw_saliency_curves(report: dict, path: Path, title: str = "") -> None:
    """Precision against recall, and F_β against the threshold, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["curves"]
    fig, (ax_pr, ax_f) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax_pr.plot(curves["recall"], curves["precision"], lw=1.5)
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="precision-recall")
    ax_f.plot(range(len(curves["fbeta"])), curves["fbeta"], lw=1.5, color="tab:orange")
    if report.get("best_threshold") is not None:
        ax_f.axvline(report["best_threshold"], color="grey", lw=0.8, ls="--")
    ax_f.set(xlabel="threshold (of 255)", ylabel=f"F_β (β² = {report['beta2']:g})", xlim=(0, 255), ylim=(0, 1.02),
             title=f"max F_β {report['max_fbeta']:.3f}, mean {report['mean_fbeta']:.3f}, MAE {report['mae']:.3f}")
    for ax in (ax_pr, ax_f):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_checkpoint_saliency(config) -> dict:
    """``trainer eval --task saliency``: a checkpoint of a two-class network against a saliency split;
    writes saliency.json, saliency.png, and report.json / report.md with the mIoU of the two classes."""
    from . import checkpoint as ckpt_io
    from .distributed import cleanup, init_distributed
    from .evaluate import eval_head, eval_loader, make_report, model_from_checkpoint, report_dir, write_report
    from .metrics import ConfusionMatrix
    from blendgen.shards.directory import ShardDir

    d = init_distributed(config.device)
    try:
        ckpt = ckpt_io.load(config.checkpoint)
        shards = ShardDir.open(Path(config.shards) / config.split)
        classes = shards.classes
        if classes.num_classes != 2:
            raise ValueError(f"task saliency: {shards.path} has {classes.num_classes} classes {list(classes.names)}, "
                             f"not background and salient (write it with blendgen pack --task saliency)")
        ckpt_io.check_compatible(ckpt, config.checkpoint, classes=classes)
        precision = resolve_precision("auto", d.device)
        model = precision.prepare_model(model_from_checkpoint(ckpt, d.device))
        head = eval_head(model, ckpt["stage"], config.head)
        start = time.perf_counter()
        loader = eval_loader(shards, config.eval_crop, config.batch_size, config.workers, d)
        cm = ConfusionMatrix(classes.num_classes, classes.ignore_index)
        meter = evaluate_saliency(model, loader, d, head, precision, config.progress, cm)  # one pass, both measures
        section = saliency_report(meter, time.perf_counter() - start)
        report = make_report(cm, classes, split=config.split, checkpoint=str(config.checkpoint), stage=ckpt["stage"],
                             head=head, samples=shards.num_samples, eval_crop=config.eval_crop, saliency=section)
        if d.is_main:
            out = report_dir(config)
            write_report(out, report)
            write_saliency(out, section, title=str(config.checkpoint))
            report["report_dir"] = str(out)
        return report
    finally:
        cleanup()


# -- IJCV Table 7 ---------------------------------------------------------------------------------
# Table 7's row names: the baseline carries its backbone ("DeepLabv3-ResNet50"), the rest "+ method".
TABLE7_METHODS = {"deeplabv3": "", "mixup": "Mixup", "cutmix": "CutMix", "sourcesep-cc": "SourceSep-CC",
                  "sourcesep-cm": "SourceSep-CM", "mixup-cm": "Mixup + Co-occurrence"}
_BACKBONE_NAMES = {"resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50", "resnet101": "ResNet101",
                   "mobilenet_v3_large": "MobileNetV3"}


def table7_name(method: str, backbone: str) -> str:
    if method == "deeplabv3":
        return f"DeepLabv3-{_BACKBONE_NAMES.get(backbone, backbone)}"
    return f"DeepLabv3 + {TABLE7_METHODS[method]}"


def saliency_tables(runs) -> list:
    """IJCV Table 7 from runs whose report has a "saliency" section (``trainer report``):
    Methods | <val set> F_β ↑ | MAE ↓, plus mean F_β; three decimals as the paper prints them."""
    from .tables import Table

    scored = [r for r in runs if r.section("saliency") is not None]
    source = (scored[0].report.get("dataset") or {}).get("source") or {}
    where = Path(str(source.get("root", ""))).name or "val"
    rows = []
    for r in scored:
        s = r.section("saliency")
        variant = r.variant()
        rows.append([table7_name(r.method, r.config.backbone) + (f" ({variant})" if variant else ""),
                     f"{s['max_fbeta']:.3f}", f"{s['mae']:.3f}", f"{s['mean_fbeta']:.3f}", r.name])
    note = (f"max F_β and mean F_β over {LEVELS} thresholds (β² = {BETA2}), MAE of the saliency map "
            "(definitions: docs/saliency.md). The paper, DUTS-TR -> ECSSD, ResNet-50: 0.906 / 0.045 (DeepLabv3), "
            "0.893 / 0.057 (Mixup), 0.903 / 0.050 (CutMix), 0.909 / 0.043 (SourceSep-CM).")
    return [Table("saliency", "Salient object detection (IJCV Table 7)",
                  ["Methods", f"{where} F_β ↑", "MAE ↓", "mean F_β ↑", "run"], rows, note)]
