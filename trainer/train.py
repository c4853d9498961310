"""``trainer run``: stage 1 on blended shards, stage 2 on standard ones, then evaluation.

    trainer run --shards out/ --backbone mobilenet_v3_large --crop 128 --iters1 300 --iters2 150
    trainer run --shards out/ --preset demo --method sourcesep-cm     # or deeplabv3, mixup, cutmix
    torchrun --standalone --nproc_per_node 2 -m trainer run --shards out/ ...

The default method, SourceSep-CC, is described here; the others change the stage-1 data, its
mixing and loss, and the baselines have a single head and one stage (:mod:`trainer.methods`).

1. Stage 1, source separation (IJCV 3.2): ``out/mixed``, L1 = CE(S_ss, G_a) + δ·CE(S_t, G_a)
   + (1-δ)·CE(S_p, G_b) with each sample's δ; f_enc, F_t, F_p, F_ss trained end to end.
2. Stage 2, denoising (IJCV 3.3): ``out/train``, from the stage-1 weights, L2 = CE(S_t, G)
   + log Σ ReLU(S_p); F_ss frozen. Fresh optimizer and schedule, lr2.
3. Evaluation on ``out/val``: mIoU of S_t (S_ss if stage 2 was skipped, ``--no-denoise``).

Everything lands in ``runs/NAME/``: config.json, metrics.jsonl (and the same scalars as
TensorBoard event files), stage1.pt, stage2.pt, last.pt, best.pt, report.json, report.md.
What the run's parts share and log is :mod:`trainer.state`; its checkpoints and ``--resume``
(the same optimizer step, data batch and RNG state, so on CPU a resumed run ends with the same
weights as an uninterrupted one) are :mod:`trainer.resume`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from blendgen.datasets.classes import ClassSet
from blendgen.io import make_dir
from blendgen.shards.directory import ShardDir

from . import checkpoint as ckpt_io
from .config import TrainConfig
from .data import ShardStream, label_pixel_counts, make_loader, take_skipped
from .distributed import (Dist, all_ranks_ok, barrier, broadcast_object, cleanup, init_distributed, mean_over_ranks,
                          sync_buffers, unwrap)
from .curves import draw_curves
from .evaluate import corrupt_summary, eval_head, eval_loader, evaluate_heads, make_report, write_report
from .losses import median_frequency_weights
from .methods import Mixer, batch_generator, batch_mixer, criterion, mixed_generation, stage_dir
from .model import ModelConfig, build_model, configure_stage
from .precision import resolve_precision
from .resume import (check_resumable, finished_before, last_stage, load_resume, note_best, save_best, save_checkpoint,
                     weights_payload)
from .saliency import evaluate_saliency, is_saliency, saliency_report, write_saliency
from .state import Position, Run, Stage, open_events, time_segments
from .transforms import normalize, train_transform


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


# -- the run ----------------------------------------------------------------------------------------

def run(config: TrainConfig) -> dict:
    """Train both stages and evaluate; returns the evaluation report."""
    d = init_distributed(config.device)
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    r = None
    try:
        take_skipped()  # --on-corrupt skip counts what this run leaves out
        if config.compile:  # refused before the run writes anything
            check_compilable(d.device)
        r = start_run(config, d)
        r.class_weight = class_weight(r)  # SHARDS/train's label pixels, counted once for both stages
        torch.manual_seed(config.seed)  # the same initial weights on every rank and every rerun
        model = prepare_model(r)
        if config.compile:
            compile_model(model)
        resume = load_resume(r, model) if config.resume else None
        r.offsets = {1: 0, 2: stage_steps(r, 1)}
        open_events(r, rebuild=resume is not None)
        position = Position(**resume["position"]) if resume else None
        for stage in (1, 2):
            kind, length = config.stage_budget(stage)
            if length == 0 or (resume and finished_before(resume, stage)):
                continue
            start = resume if resume and resume["position"]["stage"] == stage else None
            position = train_stage(r, model, stage, start)
        print(f"[rank {d.rank}] final weights sha256 {weights_digest(model)}", flush=True)
        return final_evaluation(r, model, position)
    except Exception as exc:
        reason = compile_failure(exc) if config.compile else None
        if reason is None:
            raise
        raise ValueError(f"compile: torch.compile failed on this machine ({reason}); run without --compile") from None
    finally:
        if r is not None and r.events is not None:
            r.events.close()
        torch.set_num_threads(threads)
        cleanup()


def start_run(config: TrainConfig, d: Dist) -> Run:
    """Resolve the run directory and the classes; write config.json (rank 0)."""
    name = config.name or broadcast_object(time.strftime("%Y%m%d-%H%M%S"), d)
    config = config.replace(name=name, **recorded_fields(config))
    run_dir = Path(config.out) / name
    if config.resume:
        config = check_resumable(config, run_dir)
        if d.is_main:
            for tmp in ckpt_io.remove_stale_temporaries(run_dir):
                tqdm.write(f"removed {tmp}, a checkpoint a killed run left half-written", file=sys.stderr)
    elif (run_dir / "last.pt").exists():
        raise ValueError(f"name: {run_dir} already holds a run; pass --resume to continue it or choose another --name")
    classes = shard_classes(config)
    model_config = ModelConfig(num_classes=classes.num_classes, backbone=config.backbone, ssh=config.ssh,
                               ssh_detach=config.ssh_detach, two_branch=config.two_branch,
                               backbone_weights=config.backbone_weights, init=config.init,
                               output_stride=config.output_stride)
    if config.init is not None:
        check_init(config.init, model_config)
    precision = resolve_precision(config.amp, d.device)
    if d.is_main:
        make_dir(run_dir)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    barrier(d)
    r = Run(config, d, run_dir, classes, model_config, precision)
    r.say(f"device {d.device.type}, {precision.name}" + (" autocast, channels_last" if precision.dtype else "")
          + f" (--amp {config.amp})")
    return r


def recorded_fields(config: TrainConfig) -> dict:
    """The config fields a run copies from its data: the stage-1 blends' strategy and δ."""
    if config.method != "sourcesep-cc" or config.stage_budget(1)[1] == 0:
        return {"mixed_strategy": None, "mixed_delta": None}
    return mixed_generation(ShardDir.open(stage_dir(config, 1)))


def shard_classes(config: TrainConfig) -> ClassSet:
    """The class set shared by every split the run reads (refusing splits that disagree)."""
    paths = [stage_dir(config, s) for s in (1, 2) if config.stage_budget(s)[1] > 0] + [Path(config.shards) / "val"]
    classes = {path: ShardDir.open(path).classes for path in dict.fromkeys(paths)}
    first = classes[paths[0]]
    for path, c in classes.items():
        if c.names != first.names or c.ignore_index != first.ignore_index:
            raise ValueError(f"shards: {path}/ has classes {list(c.names)}, {paths[0]}/ has {list(first.names)}")
    return first


def prepare_model(r: Run) -> nn.Module:
    """Build the network (with --init weights), moved to the device in its memory format."""
    try:
        model = build_model(r.model_config)
    except OSError as exc:  # torch.hub's download of --backbone-weights imagenet
        raise ValueError(f"backbone_weights: could not fetch the ImageNet weights ({exc})") from None
    except RuntimeError as exc:  # load_state_dict's size mismatches: keep one line
        if r.config.init is None:
            raise
        raise ckpt_io.CheckpointError(f"init: {r.config.init} does not fit this model: "
                                      f"{str(exc).splitlines()[-1].strip()}") from None
    model = r.precision.prepare_model(model.to(r.dist.device))  # NHWC with autocast and on CUDA
    if r.config.sync_bn and r.dist.distributed and r.dist.device.type != "cuda":
        r.say("sync_bn: this torch's SyncBatchNorm runs on CUDA only; CPU ranks keep per-process BatchNorm")
    converted = sync_batchnorm(model, r.config.sync_bn, r.dist)
    synced = sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    if synced:
        r.say(f"sync_bn: {synced} BatchNorm layers synchronised over {r.dist.world_size} processes")
    return converted


def sync_batchnorm(model: nn.Module, enabled: bool, d: Dist) -> nn.Module:
    """``sync_bn``: every BatchNorm of the model becomes a SyncBatchNorm when the run has several
    CUDA processes, so that the statistics come from the global batch (8 images over 8 GPUs
    would give each BatchNorm one). Done once, before either stage's DDP wraps the model; the
    parameter and buffer names stay those of BatchNorm, so checkpoints load into a plain model.
    A single process keeps its BatchNorm untouched (bit-identical to a run without the option);
    CPU ranks too, as torch's SyncBatchNorm refuses CPU tensors in training."""
    if not (enabled and d.distributed and d.device.type == "cuda"):
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def compile_model(model: nn.Module) -> None:
    """``--compile``: torch.compile the model's forward in place (``nn.Module.compile``), so that
    DDP, the validation and the checkpoints all see the one module and its state dict keeps its
    names (torch.compile's wrapper would prefix every key with ``_orig_mod.``). Compilation
    happens at the first step; a failure there becomes one line in ``run`` (compile_failure)."""
    model.compile()


def check_compilable(device: torch.device) -> None:
    """Refuse --compile in one line where torch.compile cannot work: the Python version, and the
    compiler the inductor backend needs (a C++ compiler on the CPU, triton on CUDA)."""
    from torch._dynamo.eval_frame import check_if_dynamo_supported

    problem = None
    try:
        check_if_dynamo_supported()
    except RuntimeError as exc:
        problem = str(exc).strip().splitlines()[0]
    if problem is None and device.type == "cpu":
        cxx = os.environ.get("CXX", "g++")  # what inductor's CPU backend calls (torch._inductor.config.cpp.cxx)
        if shutil.which(cxx) is None:
            problem = f"inductor's CPU backend compiles C++, and no {cxx!r} is on PATH (install g++ or set CXX)"
    elif problem is None and device.type == "cuda" and importlib.util.find_spec("triton") is None:
        problem = "inductor's CUDA backend needs the triton package, which is not installed"
    if problem is not None:
        raise ValueError(f"compile: {problem}; run without --compile")


def compile_failure(exc: BaseException) -> str | None:
    """A short reason when ``exc`` (or what caused it) came from dynamo or inductor, else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__module__.startswith(("torch._dynamo", "torch._inductor")):
            lines = [line.strip() for line in str(seen).splitlines() if line.strip()]
            return " ".join(lines[:2])[:300] or type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return None


def check_init(path: str, model_config: ModelConfig) -> None:
    """An --init file must hold a state dict; one of our checkpoints must be of the same
    architecture. Checked before the run writes anything, so a bad file leaves nothing behind."""
    try:
        ckpt = ckpt_io.load(path)
    except ckpt_io.CheckpointError:  # a bare state dict (e.g. torchvision's): load_init matches it key by key
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # random bytes, a text file, a pickle of other objects
            raise ckpt_io.CheckpointError(f"init: {path} is not a state dict or checkpoint "
                                          f"({ckpt_io.load_error(exc)})") from None
        if not isinstance(obj, dict):
            raise ckpt_io.CheckpointError(f"init: {path} holds a {type(obj).__name__}, not a state dict") from None
        return
    ckpt_io.check_compatible(ckpt, f"init {path}", model_config={"backbone": model_config.backbone,
                                                                  "output_stride": model_config.output_stride})


# -- one stage --------------------------------------------------------------------------------------

def train_stage(r: Run, model: nn.Module, stage: int, start: dict | None) -> Position:
    """Optimize one stage to its step budget, checkpointing along the way; returns where it ended."""
    c = r.config
    shards = ShardDir.open(stage_dir(c, stage))
    dataset = train_dataset(r, shards)
    s = make_stage(r, model, stage, len(dataset), start, batch_mixer(c, stage, shards, r.dist.device))
    loader = make_loader(dataset, c.workers, pin_memory=r.dist.device.type == "cuda")
    r.say(f"stage {stage}: {dataset.num_samples} samples in {dataset.path}, {len(dataset)} batches/epoch per "
          f"process, {s.total_steps} optimizer steps")
    bar = tqdm(total=s.total_steps, initial=s.position.step, desc=f"stage {stage}", unit="step",
               disable=not (c.progress and r.dist.is_main), dynamic_ncols=True)
    while s.position.step < s.total_steps:
        dataset.set_epoch(s.position.epoch, s.position.batch)
        train_one_epoch(r, s, loader, bar)
        if s.position.batch == len(dataset):
            s.position.epoch, s.position.batch = s.position.epoch + 1, 0
    bar.close()
    sync_buffers(model, r.dist)
    improved = False
    if c.eval_every != 0 and not last_stage(c, stage):  # the last stage's end is the final evaluation
        improved = validate(r, s)
    if r.dist.is_main:  # before last.pt says the stage is done, so a kill between them loses nothing
        ckpt_io.save(r.path(f"stage{stage}.pt"), weights_payload(r, model, stage))
    save_checkpoint(r, model, s, stage_done=True)
    if improved:  # after last.pt, which records it (reconcile_best)
        save_best(r, model, stage)
    return s.position


def train_dataset(r: Run, shards: ShardDir) -> ShardStream:
    c = r.config
    return ShardStream(shards, train_transform(c.crop, c.scale), c.batch_size,
                       shuffle=True, drop_last=True, seed=c.seed, rank=r.dist.rank, world_size=r.dist.world_size,
                       shuffle_buffer=c.shuffle_buffer, unit=c.unit, on_corrupt=c.on_corrupt)


def make_stage(r: Run, model: nn.Module, stage: int, batches_per_epoch: int, start: dict | None,
               mix: Mixer | None) -> Stage:
    """Optimizer (SGD), poly schedule and scaler for a stage, restored from ``start`` if resuming."""
    c = r.config
    configure_stage(model, stage)  # stage 2 freezes F_ss (before DDP sees which parameters train)
    total = total_steps(c, stage, batches_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(c, params, stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, total=total, warmup=c.warmup,
                                                                     power=c.poly_power))
    scaler = torch.amp.GradScaler(r.dist.device.type, enabled=r.precision.dtype == torch.float16)
    position = Position(stage)
    if start is not None:
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
        scaler.load_state_dict(start["scaler"])
        position = Position(**start["position"])
    wrapped = model
    if r.dist.distributed:
        device_ids = [r.dist.device.index] if r.dist.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
    loss = criterion(c.method, stage, c.ppa_eps, c.ppa_weight, r.class_weight)
    return Stage(stage, wrapped, loss, mix, optimizer, scheduler, scaler, total, position)


def total_steps(c: TrainConfig, stage: int, batches_per_epoch: int) -> int:
    kind, length = c.stage_budget(stage)
    return length if kind == "iters" else max(1, length * batches_per_epoch // c.accum)


def stage_steps(r: Run, stage: int) -> int:
    """A stage's optimizer steps (0 when skipped): the event files number stage 2's steps after
    stage 1's, also in a process resumed in stage 2."""
    c = r.config
    kind, length = c.stage_budget(stage)
    if length == 0 or kind == "iters":
        return length
    return total_steps(c, stage, len(train_dataset(r, ShardDir.open(stage_dir(c, stage)))))


def class_weight(r: Run) -> Tensor | None:
    """``--class-weights median-freq``: (K,) weights from SHARDS/train's label pixels, on the
    device; written to class_weights.json and said once. None = plain CE (the papers')."""
    c = r.config
    if c.class_weights is None:
        return None
    k = r.classes.num_classes
    pixels, image_pixels = label_pixel_counts(ShardDir.open(Path(c.shards) / "train"), k, r.classes.ignore_index)
    weights = median_frequency_weights(pixels, image_pixels)
    if r.dist.is_main and not r.path("class_weights.json").exists():
        table = dict(zip(r.classes.names, (round(float(w), 4) for w in weights)))
        r.path("class_weights.json").write_text(json.dumps({"rule": c.class_weights, "weights": table}, indent=2) + "\n")
        r.say("class weights (" + c.class_weights + "): " + ", ".join(f"{n} {w:.2f}" for n, w in table.items()))
    return torch.tensor(weights, dtype=torch.float32, device=r.dist.device)


def make_optimizer(c: TrainConfig, params: list, stage: int) -> torch.optim.Optimizer:
    """The papers' SGD (momentum, weight decay), or AdamW with the same momentum as beta1 (ours),
    each stage with its own (``TrainConfig.stage_optimizer``)."""
    kind, lr, weight_decay = c.stage_optimizer(stage)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(c.momentum, 0.999), weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=c.momentum, weight_decay=weight_decay)


def lr_factor(step: int, *, total: int, warmup: int, power: float) -> float:
    """"poly" (Chen et al. 2018), lr = base * (1 - step / total) ** power, after ``warmup`` steps
    of linear warm-up from base / warmup (ours; 0 = none)."""
    if step < warmup:
        return (step + 1) / warmup
    return (1 - min(step, total) / total) ** power


def train_one_epoch(r: Run, s: Stage, loader, bar: tqdm) -> None:
    """Consume the rest of the current epoch (or stop at the step budget): forward, loss,
    backward per batch; an optimizer step every ``accum`` batches; log and checkpoint on steps."""
    c, d = r.config, r.dist
    s.model.train()
    meter = Meter()
    micro = 0  # batches into the current accumulation; checkpoints fall on 0, so resume starts at 0
    tick = time.perf_counter()
    for batch in loader:
        meter.wait += time.perf_counter() - tick
        x, batch = to_device(batch, d.device)
        if s.mix is not None:
            g = batch_generator(c.seed, d.rank, s.number, s.position.epoch, s.position.batch, d.device)
            x, batch = s.mix(x, batch, g)
        sync = (micro + 1) % c.accum == 0  # DDP all-reduces gradients only on the last micro-batch
        with nullcontext() if sync or not d.distributed else s.model.no_sync():
            with r.precision.autocast(d.device):
                out = s.model(r.precision.prepare_input(normalize(x)))  # {"t", "p", "ss"}: (B, K, H, W)
            loss, terms = s.criterion(out, batch, r.classes.ignore_index)
            if not all_ranks_ok(math.isfinite(terms["loss"]), d):
                raise TrainingDiverged(f"stage {s.number} step {s.position.step + 1}: loss is {terms['loss']} "
                                       f"(on this or another rank); stopped, the last good checkpoint is "
                                       f"{r.path('last.pt') if r.path('last.pt').exists() else 'none'}")
            s.scaler.scale(loss / c.accum).backward()
        micro = (micro + 1) % c.accum
        s.position.batch += 1
        meter.add(terms, len(x) * d.world_size)
        if sync:
            optimizer_step(s, c.grad_clip)
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.3f}", samples_s=f"{meter.rate():.1f}")
            if s.position.step % c.log_every == 0 or s.position.step == s.total_steps:
                r.log(meter.record(s, d))
                meter = Meter()
            saved = False
            if c.eval_every and s.position.step % c.eval_every == 0 and s.position.step < s.total_steps:
                if validate(r, s):  # a new best: last.pt records it first (reconcile_best), then best.pt
                    save_checkpoint(r, s.model, s, stage_done=False)
                    save_best(r, s.model, s.number)
                    saved = True
                s.model.train()
            if s.position.step % c.checkpoint_every == 0 and s.position.step < s.total_steps and not saved:
                save_checkpoint(r, s.model, s, stage_done=False)
            if s.position.step == s.total_steps:
                return
        tick = time.perf_counter()


def validate(r: Run, s: Stage) -> bool:
    """mIoU on val/ of every head the model has, logged as one metrics.jsonl line, and curves.png
    redrawn; True when it is the run's best so far (the caller writes best.pt). Touches no RNG
    the training draws from (the loader has its own generator) and no weight or BN statistic
    (eval mode), so a run validates without changing what it learns."""
    model = unwrap(s.model)
    cms, seconds, _ = evaluate_val(r, model)
    return note_best(r, log_validation(r, s.position, cms, eval_head(model, s.number), seconds))


def evaluate_val(r: Run, model: nn.Module, progress: bool = False) -> tuple[dict, float, ShardDir]:
    """One pass over val/: a confusion matrix per head of the model, the seconds it took, the shards."""
    shards = ShardDir.open(Path(r.config.shards) / "val")
    loader = eval_loader(shards, r.config.eval_crop, r.config.eval_batch_size, r.config.workers, r.dist,
                         r.config.on_corrupt)
    start = time.perf_counter()
    cms = evaluate_heads(model, loader, r.classes.num_classes, r.classes.ignore_index, r.dist, model_heads(model),
                         r.precision, progress, r.config.eval_scale)
    return cms, time.perf_counter() - start, shards


def log_validation(r: Run, position: Position, cms: dict, head: str, seconds: float) -> dict:
    """One metrics.jsonl line of val mIoU per head (``val_miou``: the head the run predicts with
    at this point), a line on the console, and curves.png redrawn."""
    scores = {h: cm.compute() for h, cm in cms.items()}
    record = {"stage": position.stage, "step": position.step, "epoch": position.epoch,
              "val_miou": round(scores[head]["miou"], 6), "val_head": head,
              **{f"val_miou_{h}": round(v["miou"], 6) for h, v in scores.items()},
              "val_pixel_acc": round(scores[head]["pixel_acc"], 6),
              "val_time_s": round(seconds, 2), "time": round(time.time(), 3)}
    r.log(record)
    r.say(f"stage {position.stage} step {position.step}: val mIoU {100 * record['val_miou']:.1f} (head {head})")
    if r.dist.is_main:
        draw_curves(r.path("metrics.jsonl"), r.path("curves.png"), title=r.dir.name)
    return record


def model_heads(model: nn.Module) -> tuple[str, ...]:
    """The predictions a model offers: S_t always, S_ss when it has a source separation head."""
    return ("t", "ss") if getattr(model, "ssh", None) is not None else ("t",)


def to_device(batch: dict, device: torch.device) -> tuple[Tensor, dict]:
    """uint8 images and int64 labels on the device; from pinned memory the copies are asynchronous."""
    x = batch["image"].to(device, non_blocking=True)  # (B, 3, H, W) uint8
    moved = {k: batch[k].to(device, non_blocking=True) for k in ("label", "phantom", "delta")}
    return x, {**batch, **moved}


def optimizer_step(s: Stage, grad_clip: float | None = None) -> None:
    if grad_clip is not None:
        s.scaler.unscale_(s.optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_([p for g in s.optimizer.param_groups for p in g["params"]], grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    s.scheduler.step()
    s.position.step += 1


class Meter:
    """Loss terms, throughput and data-wait time since the last logged step."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.batches = 0
        self.samples = 0
        self.wait = 0.0
        self.start = time.perf_counter()

    def add(self, terms: dict[str, float], samples: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.batches += 1
        self.samples += samples

    def rate(self) -> float:
        return self.samples / max(time.perf_counter() - self.start, 1e-9)

    def record(self, s: Stage, d: Dist) -> dict:
        """One metrics.jsonl line: means over the interval and over ranks."""
        means = mean_over_ranks({k: v / self.batches for k, v in self.sums.items()}
                                | {"data_wait_s": self.wait / self.batches}, d)
        return {"stage": s.number, "step": s.position.step, "epoch": s.position.epoch,
                "lr": s.optimizer.param_groups[0]["lr"], **{k: round(v, 6) for k, v in means.items()},
                "samples_per_s": round(self.rate(), 2), "time": round(time.time(), 3)}


# -- the end ---------------------------------------------------------------------------------------

def weights_digest(model: nn.Module) -> str:
    """A short hash of every parameter and buffer: equal on all ranks after DDP training."""
    h = hashlib.sha256()
    for name, t in sorted(unwrap(model).state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def dataset_identity(val: ShardDir) -> dict:
    """What says two runs were evaluated on the same data (``trainer report`` compares it): the
    source dataset and split behind the val shards, and the digest of their image ids."""
    generation = val.manifest.get("generation", {})
    return {"source": val.manifest.get("source", {}), "ids_sha256": generation.get("ids_sha256"),
            "samples": val.num_samples}


def final_evaluation(r: Run, model: nn.Module, position: Position | None) -> dict:
    """mIoU on val/ from the trained network, logged as the curve's last point at ``position``
    (the end of the last stage trained); report.json and report.md (rank 0)."""
    c = r.config
    stage = 2 if c.stage_budget(2)[1] > 0 else 1
    head = eval_head(model, stage)
    cms, seconds, shards = evaluate_val(r, model, c.progress)
    if position is not None:  # a new best here: the weights of last.pt's last save (reconcile_best)
        if note_best(r, log_validation(r, position, cms, head, seconds)):
            save_best(r, model, stage)
    report = make_report(cms[head], r.classes, split="val", run=str(r.dir), method=c.method, budget=c.budget,
                         stage=stage, head=head,
                         dataset=dataset_identity(shards), samples=shards.num_samples, eval_crop=c.eval_crop,
                         eval_scale=c.eval_scale, precision=r.precision.name, eval_time_s=round(seconds, 2),
                         total_time_s=round(sum(seg["seconds"] for seg in time_segments(r)), 2))
    if r.best is not None:  # the best validation of the run: best.pt's weights
        report["best"] = {"checkpoint": "best.pt", **r.best}
    if r.earlier:  # resumed: each process's share of total_time_s
        report["segments"] = time_segments(r)
    if len(cms) > 1:  # both of the two-branch network's predictions: S_t (ours) and S_ss (the paper's)
        report["by_head"] = {h: {k: v for k, v in make_report(cm, r.classes).items() if k != "pixels"}
                             for h, cm in cms.items()}
    if is_saliency(shards.manifest):  # IJCV Table 7: max F_β, MAE of the same head (trainer.saliency)
        loader = eval_loader(shards, c.eval_crop, c.eval_batch_size, c.workers, r.dist, c.on_corrupt)
        start = time.perf_counter()
        meter = evaluate_saliency(model, loader, r.dist, head, r.precision, c.progress)
        report["saliency"] = saliency_report(meter, time.perf_counter() - start)
    skipped = corrupt_summary(take_skipped(), r.dist)
    if skipped["count"]:  # --on-corrupt skip: left out of training and evaluation by this process
        report["corrupt_skipped"] = skipped
    if r.dist.is_main:
        write_report(r.dir, report)
        if "saliency" in report:
            write_saliency(r.dir, report["saliency"], title=r.dir.name)
        report["report_dir"] = str(r.dir)  # only where it was written: the CLI prints it once
    return report
