"""Segmentation metrics from one confusion matrix accumulated over a whole split.

    cm = ConfusionMatrix(num_classes=21)
    for batch in loader:
        cm.update(batch["label"], prediction(model(x)).argmax(1))
    cm.reduce_from_all_processes()
    print(cm.compute()["miou"])

mIoU is computed from the summed matrix (the PASCAL VOC protocol the papers report), not as a
mean of per-image IoUs, so large and small images weigh by their pixels.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


class ConfusionMatrix:
    """(K, K) int64 counts: rows are ground-truth classes, columns predicted classes.

    The matrix lives on the device of the first ``update`` (``torch.bincount`` there); pixels
    whose target is ``ignore_index`` are skipped. Any other value outside [0, K), in target or
    prediction, raises rather than being dropped or miscounted."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, target: Tensor, pred: Tensor) -> None:
        """Count target/prediction pairs. Any matching shapes of integer class ids."""
        if target.shape != pred.shape:
            raise ValueError(f"target {tuple(target.shape)} and pred {tuple(pred.shape)} differ")
        K = self.num_classes
        target = target.reshape(-1).long()  # (N,)
        pred = pred.reshape(-1).to(target.device).long()  # (N,)
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]  # (M,)
        if target.numel() == 0:
            return
        _check_range(target, pred, K)
        counts = torch.bincount(target * K + pred, minlength=K * K).reshape(K, K)
        if self.mat.device != counts.device:
            self.mat = self.mat.to(counts.device)
        self.mat += counts

    def compute(self) -> dict:
        """{"miou", "iou", "pixel_acc", "mean_acc"} from the accumulated matrix.

        IoU_c = TP / (TP + FP + FN). A class with an empty union (neither in any target nor
        predicted anywhere) has no IoU: it is None in "iou" and left out of "miou", the usual
        VOC practice (a class absent from the split cannot be scored). "mean_acc" averages the
        per-class recall over classes present in the targets. NaN when nothing was counted."""
        h = self.mat.double().cpu()
        tp = h.diag()  # (K,)
        gt = h.sum(dim=1)  # (K,) pixels of each true class
        union = gt + h.sum(dim=0) - tp  # (K,)
        iou = tp / union  # (K,), NaN where union == 0
        recall = tp / gt  # (K,), NaN where gt == 0
        total = h.sum().item()
        return {
            "miou": _nanmean(iou),
            "iou": [None if math.isnan(v) else v for v in iou.tolist()],
            "pixel_acc": tp.sum().item() / total if total else math.nan,
            "mean_acc": _nanmean(recall),
        }

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices of all ranks (no-op without an initialised process group)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_backend() == "nccl" and self.mat.device.type != "cuda":
            self.mat = self.mat.cuda()  # a rank that saw no labelled pixel is still on the CPU
        dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        self.mat.zero_()

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts (e.g. per-subset matrices into a total)."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("merge: confusion matrices of different classes or ignore index")
        self.mat += other.mat.to(self.mat.device)

    def state_dict(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "mat": self.mat.cpu().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_classes"] != self.num_classes:
            raise ValueError(
                f"load_state_dict: {state['num_classes']} classes, expected {self.num_classes}"
            )
        self.ignore_index = state["ignore_index"]
        self.mat = state["mat"].to(device=self.mat.device, dtype=torch.int64).clone()

    def __str__(self) -> str:
        r = self.compute()
        ious = " ".join("-" if v is None else f"{100 * v:.1f}" for v in r["iou"])
        return (
            f"mIoU {100 * r['miou']:.2f}  pixel acc {100 * r['pixel_acc']:.2f}  "
            f"mean acc {100 * r['mean_acc']:.2f}\nper-class IoU: {ious}"
        )


def _check_range(target: Tensor, pred: Tensor, num_classes: int) -> None:
    # One device sync for both bounds; a class id K or above would land in another cell.
    t_lo, t_hi, p_lo, p_hi = torch.stack([*torch.aminmax(target), *torch.aminmax(pred)]).tolist()
    for name, lo, hi in (("target", t_lo, t_hi), ("pred", p_lo, p_hi)):
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name}: class ids must lie in [0, {num_classes}), got [{lo}, {hi}]")


def _nanmean(x: Tensor) -> float:
    x = x[~x.isnan()]
    return x.mean().item() if x.numel() else math.nan
