"""Evaluation: one confusion matrix over a whole split, reduced across ranks, and the report.

    trainer eval --checkpoint runs/demo/stage2.pt --shards out/

mIoU comes from the matrix summed over every pixel of the split (the VOC protocol), never from
per-image IoUs; pixels labelled 255 are skipped. Each rank evaluates its own exactly-once share
of the split (see :mod:`trainer.data`) and the matrices are summed once at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from blendgen.datasets.classes import ClassSet
from blendgen.shards.directory import ShardDir

from . import checkpoint as ckpt_io
from .data import ShardStream, make_loader, take_skipped
from .distributed import Dist, cleanup, init_distributed, mean_over_ranks
from .metrics import ConfusionMatrix
from .model import ModelConfig, build_model, prediction, scaled_forward
from .precision import Precision, resolve_precision
from .transforms import eval_transform, normalize, pad_collate

HEADS = ("auto", "t", "ss")


@dataclass(frozen=True)
class EvalConfig:
    """``trainer eval``: a checkpoint against one split of a shard root."""

    checkpoint: str
    shards: str
    split: str = "val"
    eval_crop: int | None = None  # None = full images; 513 = IJCV centre crops
    eval_scale: float | None = None  # network input size / stored size; None = the run's own (trainer run --eval-scale)
    batch_size: int = 1
    workers: int = 2
    device: str = "auto"
    head: str = "auto"
    out: str | None = None  # report directory; None = next to the checkpoint
    on_corrupt: str = "stop"  # a sample whose checksum fails: stop, or skip it (left out of the metric, counted)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.on_corrupt not in ("stop", "skip"):
            raise ValueError(f"on_corrupt: expected stop or skip, got {self.on_corrupt!r}")
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {self.head!r}")
        if self.eval_crop is not None and self.eval_crop < 16:
            raise ValueError(f"eval_crop: expected None (full images) or >= 16, got {self.eval_crop}")
        if self.eval_scale is not None and not 0 < self.eval_scale <= 4:
            raise ValueError(f"eval_scale: expected None (the run's own) or in (0, 4], got {self.eval_scale}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers: expected >= 0, got {self.workers}")


def eval_head(model: nn.Module, stage: int, head: str = "auto") -> str:
    """The output to predict from. After stage 2 that is S_t (ours, METHOD.md); after stage 1
    alone it is S_ss when the model has one (IJCV 3.2.2), as ``trainer.model.prediction`` notes."""
    if head != "auto":
        return head
    return "ss" if stage == 1 and getattr(model, "ssh", None) is not None else "t"


def prediction_heads(model: nn.Module) -> tuple[str, ...]:
    """The model's predictions every evaluation reports (report.json ``by_head``): S_t, and S_ss
    where the model has an SSH (the phantom S_p predicts the other image, not this one)."""
    return ("t", "ss") if getattr(model, "ssh", None) is not None else ("t",)


def by_head(cms: dict[str, ConfusionMatrix], classes: ClassSet) -> dict:
    """{head: report without the pixel count} for report.json."""
    return {h: {k: v for k, v in make_report(cm, classes).items() if k != "pixels"} for h, cm in cms.items()}


def eval_loader(shards: ShardDir, crop: int | None, batch_size: int, workers: int, d: Dist,
                on_corrupt: str = "stop") -> ShardStream:
    """This rank's exactly-once share of a split, in stored order."""
    dataset = ShardStream(shards, eval_transform(crop), batch_size, shuffle=False, drop_last=False,
                          rank=d.rank, world_size=d.world_size, collate_fn=pad_collate, on_corrupt=on_corrupt)
    return make_loader(dataset, workers, pin_memory=d.device.type == "cuda")


def evaluate(model: nn.Module, loader, num_classes: int, ignore_index: int, d: Dist, head: str = "t",
             precision: Precision | None = None, progress: bool = False, scale: float = 1.0) -> ConfusionMatrix:
    """Accumulate the confusion matrix of ``head``'s argmax over ``loader``, summed over ranks."""
    return evaluate_heads(model, loader, num_classes, ignore_index, d, (head,), precision, progress, scale)[head]


@torch.inference_mode()
def evaluate_heads(model: nn.Module, loader, num_classes: int, ignore_index: int, d: Dist, heads: tuple[str, ...],
                   precision: Precision | None = None, progress: bool = False,
                   scale: float = 1.0) -> dict[str, ConfusionMatrix]:
    """One pass over ``loader``, one confusion matrix per output head, summed over ranks; the
    network runs at ``scale`` times each image's size (see ``scaled_forward``). Leaves the model
    in eval mode (callers that go on training set it back)."""
    model.eval()
    cms = {head: ConfusionMatrix(num_classes, ignore_index) for head in heads}
    precision = precision or resolve_precision("none", d.device)
    for batch in tqdm(loader, desc="eval", disable=not (progress and d.is_main), leave=False):
        x = precision.prepare_input(batch["image"].to(d.device, non_blocking=True))  # (B, 3, H, W) uint8
        with precision.autocast(d.device):
            out = scaled_forward(model, normalize(x), scale)
        label = batch["label"].to(d.device, non_blocking=True)  # (B, H, W)
        for head, cm in cms.items():
            cm.update(label, prediction(out, head).argmax(1))  # (B, H, W)
    for cm in cms.values():
        cm.reduce_from_all_processes()
    return cms


def make_report(cm: ConfusionMatrix, classes: ClassSet, **context) -> dict:
    """{"miou", "pixel_acc", "mean_acc", "per_class_iou": {name: iou or None}, ...context}."""
    r = cm.compute()
    return {**context, "miou": r["miou"], "pixel_acc": r["pixel_acc"], "mean_acc": r["mean_acc"],
            "per_class_iou": dict(zip(classes.names, r["iou"])),
            "pixels": int(cm.mat.sum().item())}


def per_class_text(report: dict, columns: int = 3) -> str:
    """The per-class IoU of a report as a compact console table, ``columns`` classes a line."""
    cells = [f"{name[:12]:<12} {'n/a' if iou is None or iou != iou else f'{100 * iou:5.1f}':>5}"
             for name, iou in report["per_class_iou"].items()]
    return "\n".join("   ".join(cells[i:i + columns]) for i in range(0, len(cells), columns))


def write_report(directory: Path, report: dict) -> None:
    """report.json (everything) and report.md (a table a person reads)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    pct = lambda v: "n/a" if v is None or v != v else f"{100 * v:.2f}"  # noqa: E731  (NaN != NaN)
    lines = [f"# Evaluation on {report.get('split', '?')}", ""]
    lines += [f"- {k}: {report[k]}" for k in ("checkpoint", "stage", "head", "samples", "eval_crop", "eval_scale") if k in report]
    lines += ["", "| measure | value |", "| --- | --- |",
              f"| mIoU | {pct(report['miou'])} |", f"| pixel accuracy | {pct(report['pixel_acc'])} |",
              f"| mean class accuracy | {pct(report['mean_acc'])} |", "",
              "| class | IoU |", "| --- | --- |"]
    lines += [f"| {name} | {pct(iou)} |" for name, iou in report["per_class_iou"].items()]
    (directory / "report.md").write_text("\n".join(lines) + "\n")


def model_from_checkpoint(ckpt: dict, device: torch.device) -> nn.Module:
    """The network a checkpoint describes, with its weights (``init`` is not reapplied)."""
    config = ModelConfig(**{**ckpt["model_config"], "init": None, "backbone_weights": None})
    model = build_model(config)
    model.load_state_dict(ckpt["model"])
    return model.to(device)


def evaluate_checkpoint(config: EvalConfig) -> dict:
    """``trainer eval``: load, check the class set against the split, evaluate, write the report."""
    d = init_distributed(config.device)
    try:
        ckpt = ckpt_io.load(config.checkpoint)
        shards = ShardDir.open(Path(config.shards) / config.split)
        classes = shards.classes
        ckpt_io.check_compatible(ckpt, config.checkpoint, classes=classes)
        precision = resolve_precision("auto", d.device)
        model = precision.prepare_model(model_from_checkpoint(ckpt, d.device))
        head = eval_head(model, ckpt["stage"], config.head)
        scale = checkpoint_eval_scale(ckpt, config.eval_scale)
        start = time.perf_counter()
        loader = eval_loader(shards, config.eval_crop, config.batch_size, config.workers, d, config.on_corrupt)
        take_skipped()
        heads = tuple(dict.fromkeys((head, *prediction_heads(model))))  # every head from one pass
        cms = evaluate_heads(model, loader, classes.num_classes, classes.ignore_index, d, heads,
                             precision=precision, progress=config.progress,
                             scale=scale)
        report = make_report(cms[head], classes, split=config.split, checkpoint=str(config.checkpoint),
                             stage=ckpt["stage"], head=head, samples=shards.num_samples,
                             eval_crop=config.eval_crop, eval_scale=scale, precision=precision.name,
                             time_s=round(time.perf_counter() - start, 2))
        if len(cms) > 1:  # both of the two-branch network's predictions: S_t (ours) and S_ss (the paper's)
            report["by_head"] = by_head(cms, classes)
        skipped = corrupt_summary(take_skipped(), d)
        if skipped["count"]:
            report["corrupt_skipped"] = skipped
        if d.is_main:
            out = report_dir(config)
            write_report(out, report)
            report["report_dir"] = str(out)
        return report
    finally:
        cleanup()


def checkpoint_eval_scale(ckpt: dict, asked: float | None) -> float:
    """The scale to evaluate a checkpoint at: the one asked for, else the one its run trained
    and validated with (``trainer run --eval-scale``; 1 for runs from before the option)."""
    if asked is not None:
        return float(asked)
    return float((ckpt.get("config") or {}).get("eval_scale", 1.0))


def corrupt_summary(messages: list[str], d: Dist, named: int = 5) -> dict:
    """``--on-corrupt skip``: how many corrupt samples all ranks left out, and the first few
    (this rank's), for report.json and the console."""
    count = round(mean_over_ranks({"n": float(len(messages))}, d)["n"] * d.world_size)
    return {"count": count, "first": messages[:named]}


def report_dir(config: EvalConfig) -> Path:
    """``--out``, or ``eval-<checkpoint stem>-<split>/`` beside the checkpoint."""
    if config.out:
        return Path(config.out)
    return Path(config.checkpoint).parent / f"eval-{Path(config.checkpoint).stem}-{config.split}"


# -- evaluation passes with subsets and input perturbations (trainer.suites) ----------------------
def per_image_confusion(target: Tensor, pred: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """(B, H, W) targets and predictions -> (B, K, K) int64 confusion counts, one matrix per
    image, from a single ``bincount`` (no per-image loop, one device sync for the range check)."""
    if target.shape != pred.shape:
        raise ValueError(f"target {tuple(target.shape)} and pred {tuple(pred.shape)} differ")
    B, K = target.shape[0], num_classes
    image = torch.arange(B, device=target.device).view(B, *[1] * (target.ndim - 1)).expand_as(target)
    keep = target != ignore_index
    t, p, i = target[keep].long(), pred.to(target.device)[keep].long(), image[keep]  # (M,)
    if t.numel():
        lo, hi = torch.stack([torch.minimum(t.min(), p.min()), torch.maximum(t.max(), p.max())]).tolist()
        if lo < 0 or hi >= K:
            raise ValueError(f"class ids must lie in [0, {K}), got [{lo}, {hi}]")
    counts = torch.bincount((i * K + t) * K + p, minlength=B * K * K)
    return counts.view(B, K, K)


@dataclass
class Subsets:
    """Named subsets of a split's images as a (N images, S subsets) membership table, looked up
    by sample key (keys are unique within a shard directory)."""

    names: list[str]
    rows: dict[str, int]  # sample key -> row of ``table``
    table: Tensor  # (N, S) bool

    @classmethod
    def from_lists(cls, subsets: dict[str, list[str]], keys: list[str]) -> Subsets:
        rows = {k: r for r, k in enumerate(keys)}
        table = torch.zeros(len(keys), len(subsets), dtype=torch.bool)
        for s, members in enumerate(subsets.values()):
            unknown = [k for k in members if k not in rows]
            if unknown:
                raise ValueError(f"subset {list(subsets)[s]!r}: keys not in the split: {unknown[:5]}")
            table[[rows[k] for k in members], s] = True
        return cls(names=list(subsets), rows=rows, table=table)

    def members(self, keys: list[str], device: torch.device) -> Tensor:
        """(B, S) float64 membership of a batch's images (float: a matmul sums the matrices)."""
        return self.table[[self.rows[k] for k in keys]].to(device, torch.float64)


@dataclass
class PassResult:
    """One pass over a split: the confusion matrix of all images and of each subset."""

    total: ConfusionMatrix
    subsets: dict[str, ConfusionMatrix]
    images: int
    seconds: float
    # with ``against_clean``: the perturbed prediction counted against the clean one (target =
    # clean prediction), over the labelled pixels; GD-UAP's fooling rate is 1 - its mIoU
    agreement: ConfusionMatrix | None = None


def _matrix(mat: Tensor, num_classes: int, ignore_index: int) -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes, ignore_index)
    cm.mat = mat.to(torch.int64)
    return cm


def evaluate_pass(predict, loader, num_classes: int, ignore_index: int, d: Dist, perturb=None,
                  subsets: Subsets | None = None, progress: bool = False, desc: str = "eval",
                  against_clean: bool = False) -> PassResult:
    """Predict every batch of ``loader``, optionally after ``perturb``, and count per-image
    confusion matrices into the total and into every subset holding the image; summed over ranks.

    ``predict``: pixels (B, 3, H, W), uint8 or float in [0, 255] -> logits (B, K, H, W)
    (:class:`trainer.attacks.PixelModel`). ``perturb(x uint8, label) -> x'`` runs with gradients
    enabled (white-box attacks need them); prediction runs without. Without ``perturb`` the
    uint8 batch goes through :func:`normalize` exactly as in :func:`evaluate`. ``against_clean``
    (with ``perturb``) also predicts the clean batch and fills ``PassResult.agreement``."""
    K = num_classes
    total = torch.zeros(K, K, dtype=torch.int64, device=d.device)
    S = 0 if subsets is None else len(subsets.names)
    per_subset = torch.zeros(S, K * K, dtype=torch.float64, device=d.device)  # exact below 2^53 pixels
    images = torch.zeros((), dtype=torch.int64, device=d.device)
    agree = torch.zeros(K, K, dtype=torch.int64, device=d.device)
    start = time.perf_counter()
    for batch in tqdm(loader, desc=desc, disable=not (progress and d.is_main), leave=False):
        x = batch["image"].to(d.device, non_blocking=True)  # (B, 3, H, W) uint8
        y = batch["label"].to(d.device, non_blocking=True)  # (B, H, W)
        clean = None
        if perturb is not None and against_clean:
            with torch.no_grad():
                clean = predict(x).argmax(1)  # (B, H, W)
        if perturb is not None:
            x = perturb(x, y)
        with torch.no_grad():
            pred = predict(x).argmax(1)  # (B, H, W)
        if clean is not None:  # padding and void pixels (label ignore) are left out, as for mIoU
            agree += per_image_confusion(torch.where(y == ignore_index, ignore_index, clean), pred, K,
                                         ignore_index).sum(0)
        per_image = per_image_confusion(y, pred, K, ignore_index)  # (B, K, K)
        total += per_image.sum(0)
        if S:
            per_subset += subsets.members(batch["key"], d.device).T @ per_image.view(len(y), -1).double()
        images += len(y)
    if dist.is_available() and dist.is_initialized():
        for t in (total, per_subset, images, agree):
            dist.all_reduce(t)
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    named = {} if subsets is None else {
        name: _matrix(per_subset[s].round().view(K, K), K, ignore_index) for s, name in enumerate(subsets.names)}
    agreement = _matrix(agree, K, ignore_index) if perturb is not None and against_clean else None
    return PassResult(_matrix(total, K, ignore_index), named, int(images), time.perf_counter() - start, agreement)
