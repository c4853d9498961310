"""``trainer run --compile`` measured: eager against ``torch.compile`` training steps, side by side.

    python bench/bench_compile.py                       # resnet18 two-branch, crop 64, batch 2: ~1-2 min on 2 cores
    python bench/bench_compile.py --device cuda --backbone resnet101 --crop 513 --batch-size 8

One training step is what ``trainer run`` does per batch in stage 1: forward of the source
separation network (three outputs), the stage-1 loss, backward, an SGD update. The compiled
model is compiled the way the trainer does it (``nn.Module.compile()``: in place, so the state
dict keeps its names). Reported: the first compiled step (compilation of forward and backward
included) as ``compile_s``, then the median of ``--steps`` steps of each after ``--warmup``
warm-up steps, steps alternating between the two models so a change of machine load hits both
alike. Results are printed and written to bench/results/bench_compile.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# No pool of compile worker processes on a small machine (read when inductor is first imported).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.losses import stage1_loss  # noqa: E402
from trainer.model import ModelConfig, build_model  # noqa: E402
from trainer.transforms import normalize  # noqa: E402


def make(args, device: torch.device):
    torch.manual_seed(0)  # both models start from the same weights
    model = build_model(ModelConfig(num_classes=21, backbone=args.backbone, output_stride=16)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)


def inputs(args, device: torch.device):
    g = torch.Generator().manual_seed(0)
    b, crop = args.batch_size, args.crop
    x = torch.randint(0, 256, (b, 3, crop, crop), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, 21, (b, crop, crop), generator=g).to(device)
    z = torch.randint(0, 21, (b, crop, crop), generator=g).to(device)
    return x, y, z, torch.full((b,), 0.85, device=device)


def step(model, optimizer, batch, device: torch.device) -> float:
    x, y, z, d = batch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False):
        out = model(normalize(x))
    stage1_loss(out, y, z, d)[0].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(args) -> dict:
    device = torch.device(args.device)
    batch = inputs(args, device)
    eager, eager_opt = make(args, device)
    compiled, compiled_opt = make(args, device)
    compiled.compile()
    compile_s = step(compiled, compiled_opt, batch, device)  # dynamo + inductor, forward and backward
    times = {"eager": [], "compiled": []}
    for i in range(args.warmup + args.steps):
        for name, (model, opt) in (("eager", (eager, eager_opt)), ("compiled", (compiled, compiled_opt))):
            t = step(model, opt, batch, device)
            if i >= args.warmup:
                times[name].append(t)
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"device": str(device), "backbone": args.backbone, "crop": args.crop, "batch": args.batch_size,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "warmup": args.warmup, "steps": args.steps,
            "compile_s": round(compile_s, 2), "eager_step_s": round(eager_s, 4), "compiled_step_s": round(compiled_s, 4),
            "speedup": round(eager_s / compiled_s, 3),
            "steps_to_repay_compile": None if compiled_s >= eager_s else round(compile_s / (eager_s - compiled_s))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_compile.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
