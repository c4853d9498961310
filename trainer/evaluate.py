"""Evaluation: one confusion matrix over a whole split, reduced across ranks, and the report.

    trainer eval --checkpoint runs/demo/stage2.pt --shards out/

mIoU comes from the matrix summed over every pixel of the split (the VOC protocol), never from
per-image IoUs; pixels labelled 255 are skipped. Each rank evaluates its own exactly-once share
of the split (see :mod:`trainer.data`) and the matrices are summed once at the end.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from blendgen.classes import ClassSet
from blendgen.shards import ShardDir

from . import checkpoint as ckpt_io
from .data import ShardStream, make_loader
from .distributed import Dist, cleanup, init_distributed
from .metrics import ConfusionMatrix
from .model import ModelConfig, build_model, prediction
from .transforms import eval_transform, normalize, pad_collate

HEADS = ("auto", "t", "ss")


@dataclass(frozen=True)
class EvalConfig:
    """``trainer eval``: a checkpoint against one split of a shard root."""

    checkpoint: str
    shards: str
    split: str = "val"
    eval_crop: int | None = None  # None = full images; 513 = IJCV centre crops
    batch_size: int = 1
    workers: int = 2
    device: str = "auto"
    head: str = "auto"
    out: str | None = None  # report directory; None = next to the checkpoint
    progress: bool = True

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {self.head!r}")
        if self.eval_crop is not None and self.eval_crop < 16:
            raise ValueError(f"eval_crop: expected None (full images) or >= 16, got {self.eval_crop}")
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


def eval_loader(shards: ShardDir, crop: int | None, batch_size: int, workers: int, d: Dist) -> ShardStream:
    """This rank's exactly-once share of a split, in stored order."""
    dataset = ShardStream(shards, eval_transform(crop), batch_size, shuffle=False, drop_last=False,
                          rank=d.rank, world_size=d.world_size, collate_fn=pad_collate)
    return make_loader(dataset, workers, pin_memory=d.device.type == "cuda")


@torch.inference_mode()
def evaluate(model: nn.Module, loader, num_classes: int, ignore_index: int, d: Dist, head: str = "t",
             amp_dtype: torch.dtype | None = None, progress: bool = False) -> ConfusionMatrix:
    """Accumulate the confusion matrix of ``head``'s argmax over ``loader``, summed over ranks."""
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index)
    channels_last = d.device.type == "cuda"
    autocast = torch.autocast(d.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for batch in tqdm(loader, desc="eval", disable=not (progress and d.is_main), leave=False):
        x = batch["image"].to(d.device, non_blocking=True)  # (B, 3, H, W) uint8
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            out = model(normalize(x))
        pred = prediction(out, head).argmax(1)  # (B, H, W)
        cm.update(batch["label"].to(d.device, non_blocking=True), pred)
    cm.reduce_from_all_processes()
    return cm


def make_report(cm: ConfusionMatrix, classes: ClassSet, **context) -> dict:
    """{"miou", "pixel_acc", "mean_acc", "per_class_iou": {name: iou or None}, ...context}."""
    r = cm.compute()
    return {**context, "miou": r["miou"], "pixel_acc": r["pixel_acc"], "mean_acc": r["mean_acc"],
            "per_class_iou": dict(zip(classes.names, r["iou"])),
            "pixels": int(cm.mat.sum().item())}


def write_report(directory: Path, report: dict) -> None:
    """report.json (everything) and report.md (a table a person reads)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    pct = lambda v: "n/a" if v is None or v != v else f"{100 * v:.2f}"  # noqa: E731  (NaN != NaN)
    lines = [f"# Evaluation on {report.get('split', '?')}", ""]
    lines += [f"- {k}: {report[k]}" for k in ("checkpoint", "stage", "head", "samples", "eval_crop") if k in report]
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
        model = model_from_checkpoint(ckpt, d.device)
        if d.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        head = eval_head(model, ckpt["stage"], config.head)
        start = time.perf_counter()
        loader = eval_loader(shards, config.eval_crop, config.batch_size, config.workers, d)
        cm = evaluate(model, loader, classes.num_classes, classes.ignore_index, d, head,
                      amp_dtype=torch.bfloat16 if d.device.type == "cuda" else None, progress=config.progress)
        report = make_report(cm, classes, split=config.split, checkpoint=str(config.checkpoint),
                             stage=ckpt["stage"], head=head, samples=shards.num_samples,
                             eval_crop=config.eval_crop, time_s=round(time.perf_counter() - start, 2))
        if d.is_main:
            out = Path(config.out) if config.out else Path(config.checkpoint).parent / f"eval-{Path(config.checkpoint).stem}-{config.split}"
            write_report(out, report)
            report["report_dir"] = str(out)
        return report
    finally:
        cleanup()
