"""Learning curves from a run's metrics.jsonl: loss terms and val mIoU against the optimizer step.

    from trainer.curves import load_curves, draw_curves
    curves = load_curves("runs/demo/metrics.jsonl")   # {"train": [...], "val": [...]} with global steps
    draw_curves("runs/demo/metrics.jsonl", "runs/demo/curves.png")

``trainer run`` writes one metrics.jsonl line per logged step (the loss terms) and one per
validation (``val_miou`` ...); stage 2 counts its steps from 0 again, so the curves put it after
stage 1: the global step of a stage-2 line is its step plus the last stage-1 step. ``trainer
report`` draws several runs' curves side by side (:func:`draw_runs`).
"""

from __future__ import annotations

import json
from pathlib import Path

from blendgen.io import save_figure

LOSS_TERMS = ("loss", "ce_ss", "ce_t", "ce_p")  # drawn on the loss axis; ℓ_PPA (log scale, may be < 0) apart


def load_curves(path: str | Path) -> dict[str, list[dict]]:
    """{"train": loss lines, "val": validation lines}, each with "global_step" added, in order."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    stage1_steps = max((m["step"] for m in lines if m["stage"] == 1), default=0)
    curves: dict[str, list[dict]] = {"train": [], "val": []}
    for m in lines:
        m["global_step"] = m["step"] + (stage1_steps if m["stage"] == 2 else 0)
        curves["val" if "val_miou" in m else "train"].append(m)
    return curves


def stage_boundary(curves: dict[str, list[dict]]) -> int | None:
    """The global step where stage 2 starts, if the run has a stage 2."""
    stage2 = [m["global_step"] - m["step"] for m in curves["train"] + curves["val"] if m["stage"] == 2]
    return stage2[0] if stage2 else None


def draw_curves(path: str | Path, out: str | Path, title: str = "") -> None:
    """curves.png of one run: loss terms (left), ℓ_PPA when present (middle), val mIoU (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = load_curves(path)
    train, val = curves["train"], curves["val"]
    has_ppa = any("ppa" in m for m in train)
    fig, axes = plt.subplots(1, 3 if has_ppa else 2, figsize=(13 if has_ppa else 9, 3.6))
    loss_ax, miou_ax = axes[0], axes[-1]
    for term in LOSS_TERMS:
        points = [(m["global_step"], m[term]) for m in train if term in m]
        if points:
            loss_ax.plot(*zip(*points), label=term, lw=1.2)
    loss_ax.set(xlabel="optimizer step", ylabel="training loss", title="loss terms")
    if has_ppa:
        points = [(m["global_step"], m["ppa"]) for m in train if "ppa" in m]
        axes[1].plot(*zip(*points), color="tab:purple", lw=1.2)
        axes[1].set(xlabel="optimizer step", ylabel="log(ε + Σ ReLU(S_p))", title="stage 2: phantom term ℓ_PPA")
    for key, style in (("val_miou_t", "-o"), ("val_miou_ss", "--s")):
        points = [(m["global_step"], 100 * m[key]) for m in val if key in m]
        if points:
            miou_ax.plot(*zip(*points), style, ms=3, lw=1.2, label=f"head {key.rsplit('_', 1)[1]}")
    miou_ax.set(xlabel="optimizer step", ylabel="val mIoU (%)", title="validation")
    boundary = stage_boundary(curves)
    for ax in axes:
        if boundary is not None:
            ax.axvline(boundary, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)


def draw_runs(runs: list[tuple[str, str | Path]], out: str | Path) -> None:
    """Several runs side by side: training loss and val mIoU (of each run's evaluated head)
    against the global optimizer step. ``runs``: (label, metrics.jsonl) pairs; runs of one label
    (seeds of one setting) share a colour and a legend entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, miou_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    colours: dict[str, object] = {}
    palette = plt.get_cmap("tab10").colors
    for label, path in runs:
        first = label not in colours
        colour = colours.setdefault(label, palette[len(colours) % len(palette)])
        curves = load_curves(path)
        loss_ax.plot([m["global_step"] for m in curves["train"]], [m["loss"] for m in curves["train"]],
                     lw=0.8, alpha=0.7, color=colour)
        points = [(m["global_step"], 100 * m["val_miou"]) for m in curves["val"]]
        if points:
            miou_ax.plot(*zip(*points), "-o", ms=2.5, lw=1, alpha=0.8, color=colour, label=label if first else None)
    loss_ax.set(xlabel="optimizer step", ylabel="training loss", title="training loss")
    miou_ax.set(xlabel="optimizer step", ylabel="val mIoU (%)", title="validation mIoU")
    for ax in (loss_ax, miou_ax):
        ax.grid(alpha=0.3)
    miou_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
