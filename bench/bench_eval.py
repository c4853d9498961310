"""Benchmark of evaluation: clean images/s and the cost of PGD-10 relative to it, in one run.

    python bench/bench_eval.py --shards out/ --checkpoint runs/demo/stage2.pt     # ~1 min on 2 cores
    python bench/bench_eval.py --shards out/ --backbone resnet101 --eval-crop 513 --batch-size 16 --device cuda

The val images are decoded once (centre crops of ``--eval-crop``, so batches stack without
padding) and kept in memory; then rounds alternate a clean pass and a PGD-10 pass over the same
batches, both through :func:`trainer.evaluate.evaluate_pass`, the suites' code path (PGD: ten
forward + backward passes to the input, then the prediction). Alternating treats both alike on
a machine whose load changes; the median round of each is reported. A last clean pass through
the real loader (decoding included, ``--workers`` processes) gives the end-to-end figure.
Without ``--checkpoint`` the model is randomly initialised: the cost does not depend on weights.

Results are printed and written to bench/results/bench_eval.json (or ``--out``).
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
from trainer import checkpoint as ckpt_io  # noqa: E402
from trainer.attacks import PixelModel, frozen, pgd  # noqa: E402
from trainer.distributed import Dist, resolve_device  # noqa: E402
from trainer.evaluate import eval_head, eval_loader, evaluate_pass, model_from_checkpoint  # noqa: E402
from trainer.precision import resolve_precision  # noqa: E402
from trainer.model import ModelConfig, build_model  # noqa: E402


def load_model(args, num_classes: int, device: torch.device) -> tuple[torch.nn.Module, str]:
    if args.checkpoint:
        ckpt = ckpt_io.load(args.checkpoint)
        model = model_from_checkpoint(ckpt, device)
        return model, eval_head(model, ckpt["stage"])
    return build_model(ModelConfig(num_classes=num_classes, backbone=args.backbone)).to(device), "t"


def cached_batches(loader, images: int) -> list[dict]:
    """The first ``images`` images of the split as batches, decoded once."""
    batches, n = [], 0
    for batch in loader:
        batches.append(batch)
        n += len(batch["label"])
        if n >= images:
            break
    return batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="blendgen output root (its val/ is read)")
    p.add_argument("--checkpoint", help="a trainer checkpoint (default: random init of --backbone)")
    p.add_argument("--backbone", default="mobilenet_v3_large")
    p.add_argument("--eval-crop", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_eval.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    d = Dist(rank=0, world_size=1, local_rank=0, device=device)
    shards = ShardDir.open(Path(args.shards) / "val")
    classes = shards.classes
    model, head = load_model(args, classes.num_classes, device)
    precision = resolve_precision("auto", device)
    model = precision.prepare_model(model)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    pm = PixelModel(model, head, precision)
    K, ignore = classes.num_classes, classes.ignore_index
    batches = cached_batches(eval_loader(shards, args.eval_crop, args.batch_size, 0, d), args.images)
    n = sum(len(b["label"]) for b in batches)

    def attack(x, y):
        return pgd(pm, x, y, args.eps, args.pgd_steps, ignore_index=ignore, generator=None)

    clean_s, pgd_s = [], []
    with frozen(model):
        evaluate_pass(pm, batches[:1], K, ignore, d)  # warm-up (cudnn autotuning, allocator)
        evaluate_pass(pm, batches[:1], K, ignore, d, perturb=attack)
        for r in range(args.rounds):
            clean_s.append(evaluate_pass(pm, batches, K, ignore, d).seconds)
            pgd_s.append(evaluate_pass(pm, batches, K, ignore, d, perturb=attack).seconds)
            print(f"round {r + 1}: clean {n / clean_s[-1]:.1f} images/s, PGD-{args.pgd_steps} "
                  f"{n / pgd_s[-1]:.2f} images/s, ratio {pgd_s[-1] / clean_s[-1]:.1f}x", flush=True)
        start = time.perf_counter()
        full = evaluate_pass(pm, eval_loader(shards, args.eval_crop, args.batch_size, args.workers, d), K, ignore, d)
        end_to_end = full.images / (time.perf_counter() - start)

    clean, attacked = statistics.median(clean_s), statistics.median(pgd_s)
    cpu = f"cpu, {torch.get_num_threads()} threads"
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "model": args.checkpoint or f"{args.backbone} (random init)", "eval_crop": args.eval_crop,
        "batch_size": args.batch_size, "images": n, "rounds": args.rounds, "amp": precision.name,
        "clean_images_per_s": round(n / clean, 2), f"pgd{args.pgd_steps}_images_per_s": round(n / attacked, 3),
        f"pgd{args.pgd_steps}_over_clean": round(attacked / clean, 2),
        "clean_end_to_end_images_per_s": round(end_to_end, 2), "end_to_end_images": full.images,
        "loader_workers": args.workers,
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
