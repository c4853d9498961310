"""The configuration of a training run, one frozen dataclass saved into every output.

    from trainer.config import TrainConfig
    config = TrainConfig(shards="out/", backbone="mobilenet_v3_large", crop=128, iters1=300, iters2=150)

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
from dataclasses import dataclass, field

from .model import BACKBONES, BACKBONE_WEIGHTS

DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "fp16", "none")
DEFAULT_EPOCHS = 30  # BMVC 2020: 30 epochs per stage (IJCV: 50)

# ``--preset demo``: the synthetic demo dataset (~150 px images) on two CPU cores in about five
# minutes (300 + 150 steps of 8 crops at ~13 samples/s, then ~500 val images); see
# docs/trainer.md. Random init learns far slower than the papers' ImageNet-initialised encoder,
# so the demo starts 40x higher than the paper's learning rates, keeping their 10:1 ratio (ours).
PRESETS: dict[str, dict] = {
    "demo": {"backbone": "mobilenet_v3_large", "crop": 128, "batch_size": 8, "iters1": 300,
             "iters2": 150, "lr1": 1e-2, "lr2": 1e-3, "log_every": 10, "checkpoint_every": 50},
}


@dataclass(frozen=True)
class TrainConfig:
    shards: str  # the blendgen output root holding mixed/, train/ and val/
    out: str = "runs"
    name: str | None = None  # run directory name under ``out``; None = a timestamp
    # -- model
    backbone: str = "resnet50"
    backbone_weights: str | None = None  # "imagenet" = torchvision's weights, downloaded on first use
    init: str | None = None  # local state dict loaded into the model before stage 1
    ssh: bool = True  # source separation head; False = the "w/o SSH" ablation
    output_stride: int = 16
    # -- data
    crop: int = 321  # random training crop (BMVC 321, IJCV 513)
    scale: tuple[float, float] = (0.5, 2.0)  # random rescaling range before the crop
    eval_crop: int | None = None  # None = full images (BMVC); 513 = center crops (IJCV)
    batch_size: int = 8  # per process; the global batch is batch_size * accum * world size
    eval_batch_size: int = 1
    accum: int = 1  # gradient accumulation: batches per optimizer step
    workers: int = 2  # DataLoader worker processes per rank (0 = load in the training process)
    shuffle_buffer: int = 256  # samples in each worker's shuffle buffer
    unit: int = 32  # samples per partition unit (a range of one shard)
    # -- schedule: optimizer steps (iters) or passes over the data (epochs), per stage; 0 skips it
    iters1: int | None = None
    iters2: int | None = None
    epochs1: int | None = None
    epochs2: int | None = None
    lr1: float = 2.5e-4
    lr2: float = 2.5e-5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    # -- run
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch in the training process; None = torch's default
    amp: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
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
        lo, hi = self.scale
        _check(0 < lo <= hi, "scale", f"expected 0 < min <= max, got {self.scale}")
        for name in ("batch_size", "eval_batch_size", "accum", "shuffle_buffer", "unit",
                     "log_every", "checkpoint_every"):
            _check(getattr(self, name) >= 1, name, f"expected >= 1, got {getattr(self, name)}")
        _check(self.workers >= 0, "workers", f"expected >= 0, got {self.workers}")
        _check(self.threads is None or self.threads >= 1, "threads", f"expected None or >= 1, got {self.threads}")
        for name in ("lr1", "lr2"):
            _check(getattr(self, name) > 0, name, f"expected > 0, got {getattr(self, name)}")
        _check(0 <= self.momentum < 1, "momentum", f"expected in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, "weight_decay", f"expected >= 0, got {self.weight_decay}")
        _check(self.poly_power >= 0, "poly_power", f"expected >= 0, got {self.poly_power}")
        object.__setattr__(self, "scale", (float(lo), float(hi)))
        for stage in (1, 2):
            iters, epochs = getattr(self, f"iters{stage}"), getattr(self, f"epochs{stage}")
            _check(iters is None or epochs is None, f"iters{stage}",
                   f"give iters{stage} or epochs{stage}, not both")
            for name, value in ((f"iters{stage}", iters), (f"epochs{stage}", epochs)):
                _check(value is None or value >= 0, name, f"expected >= 0, got {value}")
            if iters is None and epochs is None:
                object.__setattr__(self, f"epochs{stage}", DEFAULT_EPOCHS)

    def stage_length(self, stage: int) -> tuple[str, int]:
        """("iters", n) or ("epochs", n) for stage 1 or 2."""
        iters = getattr(self, f"iters{stage}")
        return ("iters", iters) if iters is not None else ("epochs", getattr(self, f"epochs{stage}"))

    def to_dict(self) -> dict:
        """Plain JSON types (lists, not tuples), for config.json and checkpoints."""
        d = dataclasses.asdict(self)
        d["scale"] = list(self.scale)
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
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Fields a resumed run may change without changing what it computes.
RESUMABLE_CHANGES = ("progress", "resume", "out", "name", "threads")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")
