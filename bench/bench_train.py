"""Benchmark of ``trainer run``'s two costs, side by side in one run; figures go to docs/trainer.md.

    python bench/bench_train.py --shards out/                 # about 2 minutes on 2 cores
    python bench/bench_train.py --shards out/ --backbone resnet50 --crop 321 --batch-size 4

1. **Model step**: one SGD training step (forward, loss, backward, update) of the source
   separation network (stage-1 loss, three outputs) against torchvision's plain DeepLabv3 with
   the same backbone, input and batch (CE on one output). Steps alternate between the two
   models so a machine whose load changes treats both alike; the median of each is reported and
   the ratio is the figure that matters (target <= 1.3x).
2. **Loader vs model**: the stage-1 loader's samples/s on the shards (decode, scale, crop, flip,
   collate, in 0, 1 and 2 worker processes, no model) against the samples/s the model consumes;
   then a short real training loop reports the time the step waited for data.

Run it on an otherwise idle machine for absolute figures; the ratios hold on a busy one. Results
are printed and written to bench/results/bench_train.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blendgen.shards.directory import ShardDir  # noqa: E402
from trainer.data import ShardStream, make_loader  # noqa: E402
from trainer.losses import ce_loss, stage1_loss  # noqa: E402
from trainer.model import ModelConfig, build_model  # noqa: E402
from trainer.transforms import normalize, train_transform  # noqa: E402


def plain_deeplab(backbone: str, num_classes: int, output_stride: int) -> torch.nn.Module:
    """torchvision's DeepLabv3, returning {"t": logits} so both models share the step code.
    torchvision has no DeepLabv3 for basic-block ResNets (resnet18/34) and fixes output stride
    8: there the single-head variant of our network is the baseline (same encoder code)."""
    if backbone in ("resnet18", "resnet34") or (backbone != "mobilenet_v3_large" and output_stride != 8):
        return build_model(ModelConfig(num_classes=num_classes, backbone=backbone, output_stride=output_stride,
                                       two_branch=False))
    make = getattr(torchvision.models.segmentation, f"deeplabv3_{backbone}")
    net = make(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"t": self.net(x)["out"]}

    return Plain()


def step_timer(model, loss_fn, x, label, phantom, delta):
    """A closure timing one training step of ``model`` on a fixed batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step() -> float:
        start = time.perf_counter()
        loss, _ = loss_fn(model(normalize(x)), label, phantom, delta)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def bench_model_step(args, num_classes: int) -> dict:
    torch.manual_seed(0)
    B, S = args.batch_size, args.crop
    x = torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8)  # (B, 3, S, S)
    label = torch.randint(0, num_classes, (B, S, S))
    phantom = torch.randint(0, num_classes, (B, S, S))
    delta = torch.full((B,), 0.85)
    # Resnets in the papers run at output stride 8 or 16; torchvision's builder fixes 8.
    ours = build_model(ModelConfig(num_classes=num_classes, backbone=args.backbone, output_stride=args.output_stride))
    plain = plain_deeplab(args.backbone, num_classes, args.output_stride)
    timers = {
        "source_separation": step_timer(ours, lambda o, y, z, d: stage1_loss(o, y, z, d), x, label, phantom, delta),
        "deeplabv3": step_timer(plain, lambda o, y, z, d: ce_loss(o, y), x, label, phantom, delta),
    }
    times = {name: [] for name in timers}
    for i in range(args.warmup + args.steps):
        for name, step in timers.items():  # alternate, so load changes hit both alike
            t = step()
            if i >= args.warmup:
                times[name].append(t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {"median_step_s": med, "samples_per_s": {n: B / t for n, t in med.items()},
            "ratio": med["source_separation"] / med["deeplabv3"],
            "params_M": {"source_separation": sum(p.numel() for p in ours.parameters()) / 1e6,
                         "deeplabv3": sum(p.numel() for p in plain.parameters()) / 1e6}}


def bench_loader(args, shards: ShardDir, workers: int) -> float:
    """Samples/s the stage-1 loader delivers alone (after its first batch)."""
    dataset = ShardStream(shards, train_transform(args.crop), args.batch_size, shuffle=True, drop_last=True)
    loader = make_loader(dataset, workers, pin_memory=False)
    it = iter(loader)
    next(it)  # worker start-up is paid once per epoch, not per step
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["key"])
        if n >= args.loader_samples:
            break
    return n / (time.perf_counter() - start)


def bench_training_wait(args, shards: ShardDir, num_classes: int, workers: int) -> dict:
    """A short real stage-1 loop: how long each step waited for its batch."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=num_classes, backbone=args.backbone, output_stride=args.output_stride))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    dataset = ShardStream(shards, train_transform(args.crop), args.batch_size, shuffle=True, drop_last=True)
    wait = busy = 0.0
    tick = time.perf_counter()
    for i, batch in enumerate(make_loader(dataset, workers, pin_memory=False)):
        got = time.perf_counter()
        if i > 0:  # the first batch includes worker start-up
            wait += got - tick
        loss, _ = stage1_loss(model(normalize(batch["image"])), batch["label"], batch["phantom"], batch["delta"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tick = time.perf_counter()
        if i > 0:
            busy += tick - got
        if i == args.train_steps:
            break
    return {"workers": workers, "steps": args.train_steps, "wait_s_per_step": wait / args.train_steps,
            "wait_fraction": wait / (wait + busy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=Path("out"), help="blendgen output root (uses mixed/)")
    parser.add_argument("--backbone", default="mobilenet_v3_large")
    parser.add_argument("--output-stride", type=int, default=None, help="default: 16 for mobilenet_v3_large, else 8")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--loader-samples", type=int, default=400)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_train.json")
    args = parser.parse_args()
    if args.output_stride is None:
        args.output_stride = 16 if args.backbone == "mobilenet_v3_large" else 8
    if args.threads:
        torch.set_num_threads(args.threads)
    shards = ShardDir.open(args.shards / "mixed")
    K = shards.classes.num_classes
    setting = {"backbone": args.backbone, "output_stride": args.output_stride, "crop": args.crop, "batch_size": args.batch_size,
               "threads": torch.get_num_threads(), "classes": K}
    print(f"setting: {setting}")

    step = bench_model_step(args, K)
    med = step["median_step_s"]
    print(f"training step: source separation {med['source_separation']:.3f} s, DeepLabv3 {med['deeplabv3']:.3f} s "
          f"-> {step['ratio']:.2f}x  (params {step['params_M']['source_separation']:.1f}M vs "
          f"{step['params_M']['deeplabv3']:.1f}M)")
    consumption = step["samples_per_s"]["source_separation"]
    loader = {w: bench_loader(args, shards, w) for w in (0, 1, 2)}
    for w, rate in loader.items():
        print(f"loader, {w} workers: {rate:.0f} samples/s  ({rate / consumption:.1f}x what the model consumes, "
              f"{consumption:.1f} samples/s)")
    wait = bench_training_wait(args, shards, K, workers=2)
    print(f"training loop with 2 workers: {1000 * wait['wait_s_per_step']:.1f} ms/step waiting for data "
          f"({100 * wait['wait_fraction']:.1f}% of the step)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setting": setting, "model_step": step, "loader_samples_per_s": loader,
                                    "model_samples_per_s": consumption, "training_wait": wait}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
