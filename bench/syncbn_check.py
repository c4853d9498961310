"""SyncBatchNorm under DDP, checked on CUDA with two processes (``trainer run --sync-bn``).

    torchrun --standalone --nproc_per_node 2 bench/syncbn_check.py --out result.json

This torch's SyncBatchNorm refuses CPU tensors in training, so the CPU tests check only the
conversion; this is the run that needs a GPU (bench/device_check.py calls it). Two GPUs: NCCL,
one rank per GPU. One GPU: both ranks on it over gloo (NCCL will not put two ranks on one
device; SyncBatchNorm has a gloo path).

Each rank converts the two-branch network exactly as ``trainer run`` does
(``trainer.train.sync_batchnorm``), wraps it in DDP and runs one training-mode forward on its
own half of a batch. A plain copy of the same initial weights then runs on the whole batch in
one process: with synchronised statistics every rank's outputs equal that copy's on its half,
and the BatchNorm running statistics equal the copy's. Per-process BatchNorm would differ in
both (``--no-sync`` shows it). Rank 0 writes the largest differences to ``--out``.

Rehearsed on the CPU (``--device cpu --crop 32 --batch-size 2``, nothing converted there): two
ranks with per-process BatchNorm differ from the whole batch by 1.29 in the outputs and 0.26 in
the running statistics; one rank (its half is the whole batch) by 0.0 in both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.distributed import Dist  # noqa: E402
from trainer.model import ModelConfig, build_model  # noqa: E402
from trainer.train import sync_batchnorm  # noqa: E402
from trainer.transforms import normalize  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4, help="per rank")
    p.add_argument("--no-sync", action="store_true", help="keep per-process BatchNorm (the check then fails)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: a rehearsal of the script's mechanics (nothing is converted there; the check fails)")
    args = p.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    device = torch.device("cuda", rank % gpus) if gpus else torch.device("cpu")
    if gpus:
        torch.cuda.set_device(device)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons
    backend = "nccl" if gpus >= world else "gloo"
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    config = ModelConfig(num_classes=21, backbone=args.backbone, output_stride=16)
    torch.manual_seed(0)
    model = build_model(config).to(device)
    torch.manual_seed(0)
    reference = build_model(config).to(device)
    for m in (*model.modules(), *reference.modules()):
        if isinstance(m, torch.nn.Dropout):  # the heads' dropout would draw other masks in the two runs
            m.p = 0.0
    model = sync_batchnorm(model, not args.no_sync, Dist(rank, world, rank, device))
    synced = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    ddp = DistributedDataParallel(model, device_ids=[device.index] if gpus else None)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (args.batch_size * world, 3, args.crop, args.crop), dtype=torch.uint8, generator=g)
    x = x.to(device)
    mine = slice(rank * args.batch_size, (rank + 1) * args.batch_size)
    ddp.train()
    reference.train()
    out = ddp(normalize(x[mine]))
    want = reference(normalize(x))
    out_diff = max(float((out[h] - want[h][mine]).abs().max()) for h in out)
    stats = dict(reference.named_buffers())
    stat_diff = max(float((b - stats[name]).abs().max()) for name, b in model.named_buffers()
                    if name.endswith(("running_mean", "running_var")))
    diffs = torch.tensor([out_diff, stat_diff], device=device)
    dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    result = {"backend": backend, "gpus": gpus, "world_size": world, "sync_batchnorm_layers": synced,
              "max_output_diff": round(float(diffs[0]), 7), "max_running_stat_diff": round(float(diffs[1]), 7)}
    result["ok"] = synced > 0 and result["max_output_diff"] < 1e-3 and result["max_running_stat_diff"] < 1e-4
    if rank == 0:
        print(json.dumps(result))
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    dist.destroy_process_group()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
