"""bf16 autocast (with channels_last, what ``--amp auto`` picks on a CPU that computes bf16) against
fp32 on this machine's CPU, side by side in one run; figures go to docs/performance.md.

    python bench/bench_amp.py                                   # the demo's setting, ~3 minutes on 2 cores
    python bench/bench_amp.py --crop 176 --classes 11           # photos-cpu's training crop

1. **Training step**: one stage-1 step (forward, L1, backward, AdamW update) of the two-branch
   network in three ways: fp32 (``--amp none``), bf16 autocast in the default layout, and bf16
   autocast with channels_last tensors (``--amp bf16``, trainer.precision), alternating, so a
   machine whose load changes treats them alike; the median of each and the ratios to fp32.
2. **Evaluation**: the forward pass of full images of varying sizes (as ``trainer run``'s
   validation sees them, batch 1), both ways, alternating image by image.

bf16 pays only where the CPU computes it natively (AMX tiles or AVX512-BF16, Intel Sapphire Rapids
and later); elsewhere oneDNN emulates it and it is slower. What this machine has is printed first.
Results are printed and written to bench/results/bench_amp.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.losses import stage1_loss  # noqa: E402
from trainer.model import ModelConfig, build_model  # noqa: E402
from trainer.precision import Precision, resolve_precision  # noqa: E402
from trainer.transforms import normalize  # noqa: E402

CPU = torch.device("cpu")
MODES = {"fp32": resolve_precision("none", CPU), "bf16 NCHW": Precision(torch.bfloat16, channels_last=False),
         "bf16 NHWC": resolve_precision("bf16", CPU)}


def cpu_features() -> dict:
    probes = {"amx_tile": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return {name: bool(getattr(torch.cpu, fn, lambda: False)()) for name, fn in probes.items()}


def bench_train_step(args) -> dict:
    torch.manual_seed(0)
    B, S, K = args.batch_size, args.crop, args.classes
    x = torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8)  # (B, 3, S, S)
    label, phantom = torch.randint(0, K, (B, S, S)), torch.randint(0, K, (B, S, S))
    delta = torch.full((B,), 0.85)
    models = {m: p.prepare_model(build_model(ModelConfig(num_classes=K, backbone=args.backbone)))
              for m, p in MODES.items()}
    optimizers = {m: torch.optim.AdamW(models[m].parameters(), lr=1e-4) for m in MODES}
    times = {m: [] for m in MODES}
    for i in range(args.warmup + args.steps):
        for m, p in MODES.items():  # alternate
            start = time.perf_counter()
            with p.autocast(CPU):
                out = models[m](p.prepare_input(normalize(x)))
            loss, _ = stage1_loss(out, label, phantom, delta)  # the losses upcast to fp32
            loss.backward()
            optimizers[m].step()
            optimizers[m].zero_grad(set_to_none=True)
            if i >= args.warmup:
                times[m].append(time.perf_counter() - start)
    med = {m: statistics.median(ts) for m, ts in times.items()}
    return {"median_step_s": med, "speedup_over_fp32": {m: med["fp32"] / t for m, t in med.items()}}


@torch.no_grad()
def bench_eval(args) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    models = {m: p.prepare_model(build_model(ModelConfig(num_classes=args.classes, backbone=args.backbone)).eval())
              for m, p in MODES.items()}
    sizes = [(int(rng.integers(args.min_size, args.max_size + 1)), int(rng.integers(args.min_size, args.max_size + 1)))
             for _ in range(args.warmup + args.images)]
    times = {m: [] for m in MODES}
    for i, (h, w) in enumerate(sizes):
        x = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8)
        for m, p in MODES.items():
            start = time.perf_counter()
            with p.autocast(CPU):
                models[m](p.prepare_input(normalize(x)))
            if i >= args.warmup:
                times[m].append(time.perf_counter() - start)
    total = {m: sum(ts) for m, ts in times.items()}
    return {"images": args.images, "total_s": total, "speedup_over_fp32": {m: total["fp32"] / t for m, t in total.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images", type=int, default=40, help="evaluation images of random sizes")
    parser.add_argument("--min-size", type=int, default=96)
    parser.add_argument("--max-size", type=int, default=192)
    parser.add_argument("--out", type=Path, default=Path("bench/results/bench_amp.json"))
    args = parser.parse_args()
    features = cpu_features()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {features}")
    step = bench_train_step(args)
    print(f"training step, batch {args.batch_size} x {args.crop}^2 (median s, speed-up over fp32): " + ", ".join(
        f"{m} {t:.3f} ({step['speedup_over_fp32'][m]:.2f}x)" for m, t in step["median_step_s"].items()))
    ev = bench_eval(args)
    print(f"evaluation, {args.images} images of {args.min_size}-{args.max_size} px (total s, speed-up): " + ", ".join(
        f"{m} {t:.2f} ({ev['speedup_over_fp32'][m]:.2f}x)" for m, t in ev["total_s"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    setting = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"setting": setting, "cpu": features, "train_step": step, "eval": ev}, indent=2) + "\n")


if __name__ == "__main__":
    main()
