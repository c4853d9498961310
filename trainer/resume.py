"""A run's checkpoints and how a run resumes from them.

``last.pt`` (weights, optimizer, schedule, scaler, RNG, data position, the best validation so far
and the time of every process) is rewritten every ``checkpoint_every`` optimizer steps and at each
stage's end; ``stageN.pt`` and ``best.pt`` hold weights only. ``trainer run --resume`` checks that
the options are those the run started with, loads last.pt and cuts metrics.jsonl back to it, so on
CPU a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from . import checkpoint as ckpt_io
from .config import RESUMABLE_CHANGES, TrainConfig
from .distributed import barrier, unwrap
from .model import ModelConfig
from .state import Run, Stage, time_segments


# Fields with no ``trainer run`` option that fix a run's data order: a resumed run left at their
# defaults takes them from its config.json (a run started when units of 32 were the default goes
# on with unit=32, the order it began with).
ORDER_FIELDS = ("unit", "shuffle_buffer")


def check_resumable(config: TrainConfig, run_dir: Path) -> TrainConfig:
    """A resumed run must compute what the interrupted one did: same config, a last.pt. Returns
    the config to resume with (:data:`ORDER_FIELDS` left at their defaults come from the run)."""
    if not (run_dir / "last.pt").is_file():
        raise ValueError(f"resume: {run_dir / 'last.pt'} not found; nothing to resume")
    recorded = json.loads((run_dir / "config.json").read_text())
    recorded.setdefault("sync_bn", False)  # runs from before the option kept per-process BatchNorm
    saved = TrainConfig.from_dict(recorded)
    fields = TrainConfig.__dataclass_fields__
    config = config.replace(**{k: getattr(saved, k) for k in (*ORDER_FIELDS, "sync_bn")
                               if getattr(config, k) == fields[k].default})
    changed = [f"{k} (was {v!r}, now {getattr(config, k)!r})" for k, v in saved.to_dict().items()
               if k not in RESUMABLE_CHANGES and config.to_dict()[k] != v]
    if changed:
        raise ValueError("resume: the run was started with other options: " + ", ".join(changed))
    return config


def load_resume(r: Run, model: nn.Module) -> dict:
    """last.pt, checked against this run and loaded into ``model``; trims metrics.jsonl to it."""
    ckpt = ckpt_io.load(r.path("last.pt"))
    ckpt_io.check_compatible(ckpt, str(r.path("last.pt")), model_config=_plain(r.model_config), classes=r.classes)
    model.load_state_dict(ckpt["model"])
    ckpt_io.set_rng_state(ckpt["rng"])  # dropout masks continue where the interrupted run was
    position = ckpt["position"]
    r.best = reconcile_best(r, ckpt)
    r.earlier, r.resumed_at = list(ckpt.get("segments", [])), dict(position)  # older checkpoints: none recorded
    if r.dist.is_main:  # a finished last stage is evaluated again: its old final val line goes
        final = ckpt["stage_done"] and last_stage(r.config, position["stage"])
        trim_metrics(r.path("metrics.jsonl"), position["stage"], position["step"], keep_val_at_end=not final)
    r.say(f"resuming {r.dir} at stage {position['stage']} step {position['step']}")
    return ckpt


def reconcile_best(r: Run, ckpt: dict) -> dict | None:
    """The best validation so far of a resumed run, with best.pt made to hold its weights.

    A validation that improves writes last.pt (recording it) before best.pt, so a kill between
    the two leaves last.pt with both the record and the weights: best.pt is rewritten from it.
    The final evaluation writes best.pt after last.pt's last save, when the weights no longer
    change: a best.pt at a finished run's own position is that, and is kept."""
    best = ckpt.get("best")  # checkpoints of older runs record none
    path = r.path("best.pt")
    held = ckpt_io.load(path).get("best") if path.is_file() else None
    if held == best:
        return best
    at = (ckpt["position"]["stage"], ckpt["position"]["step"])
    if best is not None and (best["stage"], best["step"]) == at:
        if r.dist.is_main:
            ckpt_io.save(path, {**{k: ckpt[k] for k in ("config", "model_config", "classes", "stage", "model")},
                                "best": best})
        return best
    if held is not None and (held["stage"], held["step"]) == at and ckpt["stage_done"]:
        return held
    return best


def note_best(r: Run, record: dict) -> bool:
    """Whether a validation line beats every earlier one of the run (``val_miou``: the head the
    run predicts with at that point; the first of equals stays); ``r.best`` follows."""
    miou = record["val_miou"]
    if miou != miou or (r.best is not None and miou <= r.best["miou"]):  # NaN: nothing was scored
        return False
    r.best = {"stage": record["stage"], "step": record["step"], "head": record["val_head"], "miou": miou}
    return True


def save_best(r: Run, model: nn.Module, stage: int) -> None:
    """best.pt: the weights of ``r.best``, a checkpoint like stageN.pt (``trainer eval`` takes it)."""
    if r.dist.is_main:
        ckpt_io.save(r.path("best.pt"), {**weights_payload(r, model, stage), "best": r.best})


def finished_before(resume: dict, stage: int) -> bool:
    p = resume["position"]
    return stage < p["stage"] or (stage == p["stage"] and resume["stage_done"])


def trim_metrics(path: Path, stage: int, step: int, keep_val_at_end: bool = True) -> None:
    """Drop the lines a killed run logged after its last checkpoint: the resumed run logs them again."""
    if not path.exists():
        return

    def logged_before(line: str) -> bool:
        m = json.loads(line)
        if not keep_val_at_end and "val_miou" in m and (m["stage"], m["step"]) == (stage, step):
            return False
        return (m["stage"], m["step"]) <= (stage, step)

    keep = [line for line in path.read_text().splitlines() if line and logged_before(line)]
    path.write_text("".join(line + "\n" for line in keep))


def _plain(model_config: ModelConfig) -> dict:
    return dict(model_config.__dict__)


def weights_payload(r: Run, model: nn.Module, stage: int) -> dict:
    """What any checkpoint holds: weights and what they mean."""
    return {"config": r.config.to_dict(), "model_config": _plain(r.model_config), "classes": r.classes.to_json(),
            "stage": stage, "model": unwrap(model).state_dict()}


def save_checkpoint(r: Run, model: nn.Module, s: Stage, stage_done: bool) -> None:
    """last.pt: weights plus everything a resumed run needs (rank 0 writes; all ranks agree)."""
    if r.dist.is_main:
        ckpt_io.save(r.path("last.pt"), {
            **weights_payload(r, model, s.number), "position": s.position.to_dict(), "stage_done": stage_done,
            "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
            "scaler": s.scaler.state_dict(), "rng": ckpt_io.rng_state(), "segments": time_segments(r),
            "best": r.best})
    barrier(r.dist)  # no rank runs ahead of a checkpoint a resume would start from


def last_stage(c: TrainConfig, stage: int) -> bool:
    return stage == 2 or c.stage_budget(2)[1] == 0
