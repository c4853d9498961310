"""What the parts of ``trainer run`` share: the run (:class:`Run`), the stage being optimised
(:class:`Stage`) and where it stands (:class:`Position`), and the run's log: metrics.jsonl lines,
mirrored as TensorBoard event files.

:mod:`trainer.train` drives the stages over these; :mod:`trainer.resume` writes them into
checkpoints and reads them back.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from blendgen.datasets.classes import ClassSet

from .config import TrainConfig
from .distributed import Dist
from .methods import Criterion, Mixer
from .model import ModelConfig
from .precision import Precision


@dataclass
class Position:
    """Where a stage stands: optimizer steps taken, and the data position of the next batch."""

    stage: int
    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches of ``epoch`` already consumed

    def to_dict(self) -> dict:
        return {"stage": self.stage, "step": self.step, "epoch": self.epoch, "batch": self.batch}


@dataclass
class Run:
    """What every function of a run shares: its config, process, output directory, classes."""

    config: TrainConfig
    dist: Dist
    dir: Path
    classes: ClassSet
    model_config: ModelConfig
    precision: Precision  # --amp resolved on this device
    started: float = field(default_factory=time.perf_counter)
    # The processes of this run before this one (--resume), as their last checkpoint recorded
    # them, and where this one took over: report.json's total_time_s counts them all.
    earlier: list = field(default_factory=list)
    resumed_at: dict | None = None
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    events: object | None = None  # rank 0's TensorBoard SummaryWriter (open_events); None = none written
    offsets: dict = field(default_factory=lambda: {1: 0, 2: 0})  # optimizer steps before each stage
    best: dict | None = None  # the best validation so far (best.pt): stage, step, head, miou
    class_weight: torch.Tensor | None = None  # (K,) --class-weights on the device, once per run; None = plain CE

    def path(self, name: str) -> Path:
        return self.dir / name

    def log(self, record: dict) -> None:
        if self.dist.is_main:
            with open(self.path("metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            write_events(self, record)

    def say(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message, file=sys.stderr)


@dataclass
class Stage:
    """The moving parts of one stage's optimization."""

    number: int
    model: nn.Module  # the DDP wrapper when distributed
    criterion: Criterion
    mix: Mixer | None  # online mixing of each batch on the device (sourcesep-cm, mixup, cutmix)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    total_steps: int
    position: Position


# Fields of a metrics.jsonl line that are not scalars to plot: where and when it was logged.
NOT_SCALARS = ("stage", "step", "epoch", "time")


def open_events(r: Run, rebuild: bool) -> None:
    """TensorBoard event files beside metrics.jsonl (rank 0): the same scalars, ``train/KEY`` and
    ``val/KEY``, at the run's global optimizer step (stage 2's steps follow stage 1's). A resumed
    run rebuilds them from metrics.jsonl, which load_resume has cut back to the checkpoint, so
    what the killed process logged after it goes and no step is written twice."""
    if not r.dist.is_main:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # a dependency; an environment without it loses only the event files
        r.say("tensorboard is not installed: no event files (pip install tensorboard); metrics.jsonl has the scalars")
        return
    if rebuild:
        for old in r.dir.glob("events.out.tfevents.*"):
            old.unlink()
    # purge_step 0: a TensorBoard that had read the removed files drops what it held from them
    r.events = SummaryWriter(str(r.dir), purge_step=0 if rebuild else None)
    if rebuild and r.path("metrics.jsonl").exists():
        for line in r.path("metrics.jsonl").read_text().splitlines():
            if line:
                write_events(r, json.loads(line), flush=False)
        r.events.flush()


def write_events(r: Run, record: dict, flush: bool = True) -> None:
    """One metrics.jsonl line as TensorBoard scalars (flushed: a killed run keeps what it logged)."""
    if r.events is None:
        return
    step = r.offsets.get(record["stage"], 0) + record["step"]
    for key, value in record.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
        r.events.add_scalar(tag, value, step, walltime=record.get("time"))
    if flush:
        r.events.flush()


def time_segments(r: Run) -> list[dict]:
    """Every process of the run so far: the earlier ones up to the last checkpoint each wrote
    (the time a killed process spent after it is redone, and counted, by its successor), and
    this one until now."""
    now = {"started": r.started_at, "seconds": round(time.perf_counter() - r.started, 2), "resumed_at": r.resumed_at}
    return [*r.earlier, now]
