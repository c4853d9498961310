"""Process group and device setup: one process per device under ``torchrun``, or a single process.

    torchrun --standalone --nproc_per_node 2 -m trainer run --shards out/ ...

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a world of one and
no process group is created. CUDA ranks use NCCL on device ``cuda:LOCAL_RANK``, CPU ranks gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank in the world and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(kind: str, local_rank: int = 0) -> torch.device:
    """"auto" -> CUDA when present, else CPU; "cuda" without a GPU is an error."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: cuda requested but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device_kind: str = "auto") -> Dist:
    """Join the torchrun process group if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_kind, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_ranks_ok(ok: bool, d: Dist) -> bool:
    """True when ``ok`` holds on every rank: a rank that stops alone would leave the others
    waiting in their next all-reduce."""
    if not d.distributed:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=d.device)
    dist.all_reduce(flag)
    return flag.item() == 0


def mean_over_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Average logged scalars over ranks (one all-reduce for all of them)."""
    if not d.distributed or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return dict(zip(values, (t / d.world_size).tolist()))


def broadcast_object(obj, d: Dist):
    """Rank 0's ``obj`` on every rank (e.g. a run name made from the clock)."""
    if not d.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Give every rank rank 0's buffers. DDP broadcasts them at the start of each forward, so
    after the last step each rank holds BatchNorm statistics updated by its own last batch;
    rank 0's are the ones the checkpoint keeps, and evaluation must use the same on all ranks."""
    if d.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(d: Dist) -> None:
    if d.distributed:
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself when not wrapped)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
