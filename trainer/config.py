"""The configuration of a training run, one frozen dataclass saved into every output.

    from trainer.config import TrainConfig
    config = TrainConfig(shards="out/", backbone="mobilenet_v3_large", crop=128, iters1=300, iters2=150)

``method`` picks one of the papers' methods (:mod:`trainer.methods`): the two SourceSep
variants train two stages, the single-head baselines one stage of both lengths together
(:meth:`TrainConfig.stage_budget`).

``budget`` names how long each method trains (``trainer run --budget``; docs/methods.md):

* ``steps`` (the default, ours): the same optimizer steps for every method. SourceSep trains
  iters1 then iters2 steps, a single-head baseline one stage of iters1 + iters2 steps. Lengths
  given in epochs keep the meaning they had before this field (each stage's passes over its own
  data; a baseline epochs1 + epochs2 passes over SHARDS/train), so older configs and the paper
  presets compute what they did.
* ``epochs`` (the papers' budget, BMVC / IJCV Sect. 4): every length counts passes over the
  method's own data. SourceSep-CC: epochs1 over SHARDS/mixed, then epochs2 over SHARDS/train;
  SourceSep-CM: both over SHARDS/train; a baseline: epochs1 passes over SHARDS/train in one
  stage from lr1. The papers train the baselines "using the same set of hyper-parameters", i.e.
  SourceSep's stage-1 recipe (30 / 50 epochs from 2.5e-4); epochs2 is the denoising stage, which
  only SourceSep has, so a baseline ignores it.

The one rule between the two: ``budget="epochs"`` takes only epochs; an iters1 or iters2 given
with it is refused (ValueError naming it), and unset epochs are :data:`DEFAULT_EPOCHS` each.
``trainer run --budget epochs`` drops a preset's step counts for the same reason.

``trainer run`` builds one :class:`TrainConfig` from its options and writes it, resolved, to
``runs/NAME/config.json`` and into every checkpoint (as a plain dict, so checkpoints load with
``torch.load(..., weights_only=True)``). A resumed run rebuilds itself from that copy.

Defaults follow the papers' recipe (BMVC 2020 Sect. 4, IJCV 2023 Sect. 4): SGD with momentum
0.9 and weight decay 5e-4, "poly" learning rate (power 0.9) from 2.5e-4 (stage 1) and 2.5e-5
(stage 2, "the same strategy during the denoising stage"), 30 epochs each, random 321 crops,
full-image evaluation. The papers give no batch size; 8 is **ours**.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .model import BACKBONES, BACKBONE_WEIGHTS

DEVICES = ("auto", "cpu", "cuda")
# ``trainer run --method``: the papers' comparison (IJCV 2023 Table 1). The two SourceSep methods
# train the two-branch network in two stages; the baselines are a plain single-head DeepLabv3.
METHODS = ("sourcesep-cc", "sourcesep-cm", "deeplabv3", "mixup", "cutmix", "mixup-cm")
TWO_BRANCH_METHODS = ("sourcesep-cc", "sourcesep-cm")
ALPHA_METHODS = ("sourcesep-cm", "mixup", "cutmix", "mixup-cm")  # the methods drawing a weight from Beta(α, α)
GAMMA_RULES = ("thres", "skip")  # IJCV Table 11: "γ-thres" (δ = 0.9 above γ) or no blend above γ
# The papers give no α for Beta(α, α) and no default γ (ours): α = 1 (δ uniform, folded to
# [0.5, 1] for the dominant) as CutMix uses; γ = 3, between Table 11's best values (3 for
# ResNet-50, γ-thres for ResNet-101).
DEFAULT_ALPHA = 1.0
DEFAULT_GAMMA = 3.0
AMP_MODES = ("auto", "bf16", "fp16", "none")
CLASS_WEIGHTS = (None, "median-freq")
OPTIMIZERS = ("sgd", "adamw")  # sgd = the papers' (momentum, weight decay); adamw (ours, the demo)
DEFAULT_EPOCHS = 30  # BMVC 2020: 30 epochs per stage (IJCV: 50)
BUDGETS = ("steps", "epochs")  # equal optimizer steps (ours, default) or the papers' epochs per method

# ``--preset demo``: the synthetic demo dataset (~150 px images) on two CPU cores in about nine
# minutes of training and evaluation (bf16 on a CPU that computes it, trainer.precision). Every
# choice is ours, measured in docs/experiments.md: from random initialisation the papers' SGD
# recipe stays on the "background" plateau, so stage 1 uses a dilated ResNet-18 (DeepLabv3 heads
# at output stride 16) and AdamW with a 30-step warm-up (lr 1e-3); no random rescaling (the small
# images lose their objects at 0.5x); median frequency class weights (the 20 object classes share
# 9% of the pixels: without them half of them stay at 0 IoU); stage 2 is the papers' optimizer,
# SGD (momentum 0.9, weight decay 5e-4) at lr 1e-2 (AdamW let the phantom term reach the encoder
# and cost 1-3 points), with ℓ_PPA's ε = 1: as written (ε = 1e-6) the term's gradient spikes in
# stage 2's first 50 steps and took 4-6 points from stage 1 on some seeds, ε = 1 bounds it
# (experiments.md §8); the SSH's loss trains F_ss alone (--ssh-detach): end to end it slowed both
# branches and cost stage 1 5 points (§9); 1200 + 300 steps, a val evaluation every 300.
_STAGE2_SGD = {"optimizer2": "sgd", "weight_decay2": 5e-4, "lr2": 1e-2}
PRESETS: dict[str, dict] = {
    "demo": {"backbone": "resnet18", "crop": 128, "scale": (1.0, 1.0), "batch_size": 8, "iters1": 1200,
             "iters2": 300, "optimizer": "adamw", "weight_decay": 1e-2, "lr1": 1e-3, **_STAGE2_SGD, "ppa_eps": 1.0,
             "ssh_detach": True, "warmup": 30, "class_weights": "median-freq", "eval_every": 300, "log_every": 10,
             "checkpoint_every": 100},
    # ``--preset photos-cpu``: real photos of ~480x360 (street scenes, CamVid-sized) on two CPU
    # cores in 13-18 minutes of training and evaluation (bf16), from random weights (all ours,
    # docs/photos.md): the demo's network, optimizers and stage 2, every image trained and
    # evaluated at half its size (--scale 0.5:0.5, --eval-scale 0.5: predictions are upsampled and
    # scored on the stored labels), random 176 crops of the 240x180 result, 1350 + 450 steps, and
    # median frequency class weights (street scenes' thin and small classes stayed at 0 IoU without).
    "photos-cpu": {"backbone": "resnet18", "crop": 176, "scale": (0.5, 0.5), "eval_scale": 0.5, "batch_size": 8,
                   "iters1": 1350, "iters2": 450, "optimizer": "adamw", "weight_decay": 1e-2, "lr1": 1e-3,
                   **_STAGE2_SGD, "warmup": 30, "class_weights": "median-freq", "eval_every": 450,
                   "log_every": 10, "checkpoint_every": 150},
    # The papers' recipes (the rest are TrainConfig's defaults, which are the papers': SGD,
    # momentum 0.9, weight decay 5e-4, poly from 2.5e-4 / 2.5e-5). The papers say only "random
    # cropping", so these presets do not rescale (our 0.5-2.0 default is off); output stride 16
    # is ours (the papers give none). Commands and tables: docs/methods.md.
    "bmvc-r101": {"backbone": "resnet101", "backbone_weights": "imagenet", "crop": 321, "scale": (1.0, 1.0),
                  "epochs1": 30, "epochs2": 30},  # BMVC 2020 Sect. 4: full-image evaluation
    "ijcv-r101": {"backbone": "resnet101", "backbone_weights": "imagenet", "crop": 513, "eval_crop": 513,
                  "scale": (1.0, 1.0), "epochs1": 50, "epochs2": 50},  # IJCV 2023 Sect. 4: 513 centre crops
    "ijcv-r50": {"backbone": "resnet50", "backbone_weights": "imagenet", "crop": 513, "eval_crop": 513,
                 "scale": (1.0, 1.0), "epochs1": 50, "epochs2": 50},
}


@dataclass(frozen=True)
class TrainConfig:
    shards: str  # the blendgen output root holding mixed/, train/ and val/
    method: str = "sourcesep-cc"  # one of METHODS; see trainer.methods
    out: str = "runs"
    name: str | None = None  # run directory name under ``out``; None = a timestamp
    # -- model
    backbone: str = "resnet50"
    backbone_weights: str | None = None  # "imagenet" = torchvision's weights, downloaded on first use
    init: str | None = None  # local state dict loaded into the model before stage 1
    ssh: bool = True  # source separation head; False = the "w/o SSH" ablation
    ssh_detach: bool = False  # (ours) the SSH's loss trains F_ss only, not the branches and encoder
    denoise: bool = True  # stage 2 (IJCV 3.3); False = the "w/o DN" ablation, stop after stage 1
    output_stride: int = 16
    # -- data
    mixed: str | None = None  # stage-1 shard directory of sourcesep-cc; None = SHARDS/mixed
    crop: int = 321  # random training crop (BMVC 321, IJCV 513)
    scale: tuple[float, float] = (0.5, 2.0)  # random rescaling range before the crop
    eval_crop: int | None = None  # None = full images (BMVC); 513 = center crops (IJCV)
    # network input size / stored size at evaluation (ours): 0.5 runs a model trained with
    # --scale 0.5:0.5 on half-size photos and scores its upsampled logits on the stored labels
    eval_scale: float = 1.0
    batch_size: int = 8  # per process; the global batch is batch_size * accum * world size
    eval_batch_size: int = 1
    accum: int = 1  # gradient accumulation: batches per optimizer step
    workers: int = 2  # DataLoader worker processes per rank (0 = load in the training process)
    shuffle_buffer: int = 256  # samples in each worker's shuffle buffer
    # samples per partition unit (a range of one shard). 1 (since issue 18): the epoch order is a uniform
    # permutation of all samples; larger units keep runs of consecutive blends (one dominant's) together
    unit: int = 1
    on_corrupt: str = "stop"  # a sample whose checksum fails: stop (one-line error) or skip (counted, reported)
    # -- schedule: optimizer steps (iters) or passes over the data (epochs), per stage; 0 skips it
    iters1: int | None = None
    iters2: int | None = None
    epochs1: int | None = None
    epochs2: int | None = None
    budget: str = "steps"  # one of BUDGETS: how the methods' lengths compare (module docstring)
    lr1: float = 2.5e-4
    lr2: float = 2.5e-5
    optimizer: str = "sgd"  # one of OPTIMIZERS; momentum is AdamW's beta1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # stage 2's own optimizer and weight decay (ours; None = stage 1's): e.g. AdamW to learn from
    # random weights in stage 1, the papers' SGD for the denoising fine-tune (docs/experiments.md)
    optimizer2: str | None = None
    weight_decay2: float | None = None
    poly_power: float = 0.9
    warmup: int = 0  # optimizer steps of linear warm-up at the start of each stage (ours; 0 = none)
    # -- stage 2: ℓ_PPA = log(ε + Σ ReLU(S_p)) per image (IJCV Eq. 5; ε ours, docs/experiments.md)
    ppa_eps: float = 1e-6
    ppa_weight: float = 1.0  # λ in L2 = CE + λ·ℓ_PPA (ours; 1 = the paper's Eq. 5, 0 = CE alone)
    # per-class weights of every CE term (ours): None = the papers' plain CE; "median-freq" =
    # median frequency balancing from SHARDS/train's labels (small classes of street scenes)
    class_weights: str | None = None
    grad_clip: float | None = None  # max global gradient norm per optimizer step; None = no clipping
    # -- evaluation on val during training: every eval_every optimizer steps and at each stage's end
    eval_every: int | None = None  # None = only at each stage's end; 0 = never during training
    # -- online mixing; None = the method's default, or unused (resolved in __post_init__)
    alpha: float | None = None  # Beta(α, α) of sourcesep-cm (δ), mixup and cutmix (λ)
    gamma: float | None = None  # sourcesep-cm: max unique categories of a pair (math.inf = none)
    gamma_rule: str | None = None  # sourcesep-cm: what happens above γ, one of GAMMA_RULES
    # sourcesep-cm (ours): floor of the dominant's δ, the folded [0.5, 1] mapped onto [delta_min, 1];
    # None = the papers' δ (trainer.mixing.cooccurrence_mix)
    delta_min: float | None = None
    # -- recorded, not chosen: ``trainer run`` copies them from the stage-1 manifest (sourcesep-cc)
    mixed_strategy: str | None = None  # blendgen mix --strategy of the stage-1 shards
    mixed_delta: str | None = None  # its --delta, e.g. "0.7:1"
    # -- run
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch in the training process; None = torch's default
    amp: str = "auto"  # auto = bf16 autocast where the device computes bf16 natively, else fp32 (trainer.precision)
    # BatchNorm -> SyncBatchNorm under torchrun on CUDA (statistics over the global batch, as
    # torchvision's and mmseg's recipes do); no effect in a single process or on CPU ranks
    sync_bn: bool = True
    compile: bool = False  # torch.compile the model (training and validation); ours, off by default
    log_every: int = 10  # optimizer steps between metrics.jsonl lines
    checkpoint_every: int = 100  # optimizer steps between last.pt saves (and at each stage end)
    progress: bool = True
    resume: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        _check(self.backbone in BACKBONES, "backbone", f"expected one of {BACKBONES}, got {self.backbone!r}")
        _check(self.backbone_weights in BACKBONE_WEIGHTS, "backbone_weights",
               f"expected one of {BACKBONE_WEIGHTS}, got {self.backbone_weights!r}")
        _check(self.device in DEVICES, "device", f"expected one of {DEVICES}, got {self.device!r}")
        _check(self.amp in AMP_MODES, "amp", f"expected one of {AMP_MODES}, got {self.amp!r}")
        _check(self.crop >= 16, "crop", f"expected >= 16, got {self.crop}")
        _check(self.eval_crop is None or self.eval_crop >= 16, "eval_crop",
               f"expected None (full images) or >= 16, got {self.eval_crop}")
        _check(0 < self.eval_scale <= 4, "eval_scale", f"expected in (0, 4], got {self.eval_scale}")
        lo, hi = self.scale
        _check(0 < lo <= hi, "scale", f"expected 0 < min <= max, got {self.scale}")
        for name in ("batch_size", "eval_batch_size", "accum", "shuffle_buffer", "unit",
                     "log_every", "checkpoint_every"):
            _check(getattr(self, name) >= 1, name, f"expected >= 1, got {getattr(self, name)}")
        _check(self.workers >= 0, "workers", f"expected >= 0, got {self.workers}")
        _check(self.on_corrupt in ("stop", "skip"), "on_corrupt", f"expected stop or skip, got {self.on_corrupt!r}")
        _check(self.optimizer in OPTIMIZERS, "optimizer", f"expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(self.optimizer2 is None or self.optimizer2 in OPTIMIZERS, "optimizer2",
               f"expected None (stage 1's) or one of {OPTIMIZERS}, got {self.optimizer2!r}")
        _check(self.weight_decay2 is None or self.weight_decay2 >= 0, "weight_decay2",
               f"expected None (stage 1's) or >= 0, got {self.weight_decay2}")
        if self.class_weights == "none":  # --class-weights none: plain CE over a preset's weights
            object.__setattr__(self, "class_weights", None)
        _check(self.class_weights in CLASS_WEIGHTS, "class_weights",
               f"expected one of {CLASS_WEIGHTS}, got {self.class_weights!r}")
        _check(self.ppa_weight >= 0, "ppa_weight", f"expected >= 0, got {self.ppa_weight}")
        _check(self.warmup >= 0, "warmup", f"expected >= 0, got {self.warmup}")
        _check(self.ppa_eps > 0, "ppa_eps", f"expected > 0, got {self.ppa_eps}")
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"expected None or > 0, got {self.grad_clip}")
        _check(self.eval_every is None or self.eval_every >= 0, "eval_every",
               f"expected None (stage ends only), 0 (never) or >= 1, got {self.eval_every}")
        _check(self.threads is None or self.threads >= 1, "threads", f"expected None or >= 1, got {self.threads}")
        for name in ("lr1", "lr2"):
            _check(getattr(self, name) > 0, name, f"expected > 0, got {getattr(self, name)}")
        _check(0 <= self.momentum < 1, "momentum", f"expected in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, "weight_decay", f"expected >= 0, got {self.weight_decay}")
        _check(self.poly_power >= 0, "poly_power", f"expected >= 0, got {self.poly_power}")
        object.__setattr__(self, "scale", (float(lo), float(hi)))
        _check(self.budget in BUDGETS, "budget", f"expected one of {BUDGETS}, got {self.budget!r}")
        for stage in (1, 2):
            iters, epochs = getattr(self, f"iters{stage}"), getattr(self, f"epochs{stage}")
            _check(iters is None or epochs is None, f"iters{stage}",
                   f"give iters{stage} or epochs{stage}, not both")
            _check(iters is None or self.budget != "epochs", f"iters{stage}",
                   f"budget epochs counts passes over each method's data: give epochs{stage}, not iters{stage}")
            for name, value in ((f"iters{stage}", iters), (f"epochs{stage}", epochs)):
                _check(value is None or value >= 0, name, f"expected >= 0, got {value}")
            if iters is None and epochs is None:
                object.__setattr__(self, f"epochs{stage}", DEFAULT_EPOCHS)
        self._check_method()

    def _check_method(self) -> None:
        """The method's own options: refuse those it has no use for, fill in its defaults."""
        m = self.method
        _check(m in METHODS, "method", f"expected one of {METHODS}, got {m!r}")
        single = m not in TWO_BRANCH_METHODS
        _check(self.ssh or not single, "ssh", f"{m} is a single-head DeepLabv3: it has no SSH to drop")
        _check(not self.ssh_detach or (self.ssh and not single), "ssh_detach",
               f"{m} has no SSH to detach" if single else "--no-ssh leaves no SSH to detach")
        _check(self.denoise or not single, "denoise", f"{m} is a single-head DeepLabv3: it has no denoising stage")
        if single:  # the baselines train iters1 + iters2 (or epochs1 + epochs2) steps in one stage
            _check(self.stage_length(1)[0] == self.stage_length(2)[0], "iters1",
                   f"{m} trains both stages' lengths in one stage: give iters1 and iters2, or epochs1 and epochs2")
        _check(self.mixed is None or m == "sourcesep-cc", "mixed",
               f"only sourcesep-cc trains on offline mixed shards, not {m}")
        if m in ALPHA_METHODS:
            alpha = DEFAULT_ALPHA if self.alpha is None else float(self.alpha)
            _check(alpha >= 0, "alpha", f"expected >= 0 (0 = no mixing), got {alpha}")
            object.__setattr__(self, "alpha", alpha)
        else:
            _check(self.alpha is None, "alpha", f"{m} draws no mixing weight from Beta(α, α)")
        if m == "sourcesep-cm":
            gamma = DEFAULT_GAMMA if self.gamma is None else float(self.gamma)
            rule = self.gamma_rule or "thres"
            _check(gamma >= 0, "gamma", f"expected >= 0 or inf, got {gamma}")
            _check(rule in GAMMA_RULES, "gamma_rule", f"expected one of {GAMMA_RULES}, got {rule!r}")
            object.__setattr__(self, "gamma", gamma)
            object.__setattr__(self, "gamma_rule", rule)
        else:
            _check(self.gamma is None, "gamma", f"only sourcesep-cm pairs by co-occurrence, not {m}")
            _check(self.gamma_rule is None, "gamma_rule", f"only sourcesep-cm pairs by co-occurrence, not {m}")
        if self.delta_min is not None:  # mixup-cm's λ weighs both targets in one head: no contradiction to floor
            _check(m == "sourcesep-cm", "delta_min", f"only sourcesep-cm's dominant δ has a floor, not {m}'s")
            _check(0.5 <= self.delta_min <= 1, "delta_min", f"expected in [0.5, 1], got {self.delta_min}")
            _check(self.alpha > 0, "delta_min", "alpha 0 draws no δ (δ = 1): there is nothing to floor")
            object.__setattr__(self, "delta_min", float(self.delta_min))

    @property
    def two_branch(self) -> bool:
        """The source separation network (True) or a plain single-head DeepLabv3 (baselines)."""
        return self.method in TWO_BRANCH_METHODS

    def stage_optimizer(self, stage: int) -> tuple[str, float, float]:
        """(optimizer, initial lr, weight decay) of stage 1 or 2."""
        if stage == 1:
            return self.optimizer, self.lr1, self.weight_decay
        wd = self.weight_decay if self.weight_decay2 is None else self.weight_decay2
        return self.optimizer2 or self.optimizer, self.lr2, wd

    def stage_length(self, stage: int) -> tuple[str, int]:
        """("iters", n) or ("epochs", n) for stage 1 or 2, as given."""
        iters = getattr(self, f"iters{stage}")
        return ("iters", iters) if iters is not None else ("epochs", getattr(self, f"epochs{stage}"))

    def stage_budget(self, stage: int) -> tuple[str, int]:
        """What this run trains in stage 1 or 2; n = 0 skips the stage.

        The two-branch methods train the stages as given (stage 2 none without denoising). A
        single-head baseline has one stage of both lengths together, iters1 + iters2 steps from
        lr1 (ours, docs/methods.md): the same optimizer steps and images as SourceSep, trained
        the way the baselines' own papers train, in one run of the poly schedule. Under
        ``budget="epochs"`` a baseline trains epochs1 alone, the papers' stage-1 recipe."""
        kind, length = self.stage_length(stage)
        if not self.two_branch:
            if stage == 2:
                return (kind, 0)
            return (kind, length) if self.budget == "epochs" else (kind, length + self.stage_length(2)[1])
        if stage == 2 and not self.denoise:
            return (kind, 0)
        return kind, length

    def to_dict(self) -> dict:
        """Plain JSON types (lists, not tuples), for config.json and checkpoints."""
        d = dataclasses.asdict(self)
        d["scale"] = list(self.scale)
        if d["gamma"] == math.inf:
            d["gamma"] = "inf"  # strict JSON has no infinity
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(d.keys() - known)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        d = dict(d)
        if "scale" in d:
            d["scale"] = tuple(d["scale"])
        if d.get("gamma") == "inf":
            d["gamma"] = math.inf
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Fields a resumed run may change without changing what it computes.
RESUMABLE_CHANGES = ("progress", "resume", "out", "name", "threads", "compile")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")
