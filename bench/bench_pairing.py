"""Benchmark: SourceSep-CM's online pairing and blending against the training step it feeds.

    python bench/bench_pairing.py --shards out/                # about 1 minute on 2 cores
    python bench/bench_pairing.py --shards out/ --batch-size 16 --crop 128 --threads 2

One real batch of ``out/train`` (decoded, scaled, cropped, flipped as in training), then, alternating
in one loop so a changing machine load hits both alike:

1. **mix**: what ``trainer run --method sourcesep-cm`` adds per batch (``trainer.methods``): the
   batch's generator, class presence, co-occurrence pairing (IJCV Algorithm 2), blending and the
   rounding back to uint8;
2. **step**: one SGD step of the two-branch network on the mixed batch (normalise, forward,
   stage-1 loss, backward, update).

Prints the medians and their ratio (target: mixing under 2% of a step at batch 16); results go to
bench/results/bench_pairing.json and the figures to docs/methods.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blendgen.shards.directory import ShardDir  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import ShardStream  # noqa: E402
from trainer.losses import stage1_loss  # noqa: E402
from trainer.methods import batch_generator, batch_mixer  # noqa: E402
from trainer.model import ModelConfig, build_model  # noqa: E402
from trainer.transforms import normalize, train_transform  # noqa: E402


def real_batch(shards: ShardDir, crop: int, batch_size: int) -> dict:
    """The first training batch of epoch 0, exactly as the loader makes it."""
    dataset = ShardStream(shards, train_transform(crop), batch_size, shuffle=True, drop_last=True, seed=0)
    return next(iter(dataset))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=Path("out"), help="blendgen output root (uses train/)")
    parser.add_argument("--backbone", default="mobilenet_v3_large")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--mixes", type=int, default=20, help="timed mixes per training step")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_pairing.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    shards = ShardDir.open(args.shards / "train")
    config = TrainConfig(shards=str(args.shards), method="sourcesep-cm")
    mix = batch_mixer(config, 1, shards, cpu)
    batch = real_batch(shards, args.crop, args.batch_size)
    x = batch["image"]  # (B, 3, S, S) uint8
    setting = {"backbone": args.backbone, "crop": args.crop, "batch_size": args.batch_size, "alpha": config.alpha,
               "gamma": config.gamma, "threads": torch.get_num_threads(), "classes": shards.classes.num_classes}
    print(f"setting: {setting}")

    model = build_model(ModelConfig(num_classes=shards.classes.num_classes, backbone=args.backbone)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def mix_once(i: int) -> tuple[float, tuple]:
        start = time.perf_counter()
        mixed = mix(x, batch, batch_generator(0, 0, 1, 0, i, cpu))
        return time.perf_counter() - start, mixed

    def step_once(mixed: torch.Tensor, targets: dict) -> float:
        start = time.perf_counter()
        loss, _ = stage1_loss(model(normalize(mixed)), targets["label"], targets["phantom"], targets["delta"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    mix_times, step_times = [], []
    for i in range(args.warmup + args.steps):  # alternate: a load change hits both alike
        times = [mix_once(i * args.mixes + j) for j in range(args.mixes)]
        t_step = step_once(*times[-1][1])
        if i >= args.warmup:
            mix_times += [t for t, _ in times]
            step_times.append(t_step)
    mix_s, step_s = statistics.median(mix_times), statistics.median(step_times)
    ratio = mix_s / step_s
    print(f"pairing + blend: {1000 * mix_s:.2f} ms/batch (median of {len(mix_times)}); "
          f"training step: {1000 * step_s:.0f} ms (median of {len(step_times)}) -> {100 * ratio:.2f}% of a step")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setting": setting, "mix_median_s": mix_s, "step_median_s": step_s,
                                    "mix_fraction_of_step": ratio}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
