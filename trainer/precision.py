"""How the network computes on a device: the autocast dtype and the memory layout.

    p = resolve_precision("auto", device)       # trainer run --amp auto
    model = p.prepare_model(model)
    with p.autocast(device):
        out = model(p.prepare_input(normalize(x)))

``auto`` is bf16 autocast with channels_last tensors wherever the hardware computes bf16 itself:
CUDA, and CPUs with AVX512-BF16 or AMX tiles (AMD Zen 4 and later, Intel Cooper Lake / Sapphire
Rapids and later). On this project's 2-core EPYC a training step of the demo's network is 1.6x
faster that way than in fp32 (1.7x at photos-cpu's crop; ``bench/bench_amp.py``, docs/performance.md).
On other CPUs oneDNN emulates bf16, which is slower than fp32, so ``auto`` stays fp32 there.
Weights, optimizer state and the losses stay fp32 either way (autocast casts the convolutions'
inputs; the losses upcast the logits).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None = fp32) and whether images and weights are channels_last (NHWC)."""

    dtype: torch.dtype | None
    channels_last: bool

    @property
    def name(self) -> str:
        """"bf16", "fp16" or "fp32", as report.json records it."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (CUDA; a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return True
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, present since torch 2.1
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """``--amp`` on ``device``: auto = bf16 where computed natively (module docstring), else fp32;
    bf16 / fp16 / none as asked. channels_last goes with any autocast, and always on CUDA (the
    tensor cores' layout); fp32 on a CPU keeps the default layout."""
    if amp not in (*AMP_DTYPES, "auto"):
        raise ValueError(f"amp: expected auto, bf16, fp16 or none, got {amp!r}")
    if amp == "auto":
        amp = "bf16" if native_bf16(device) else "none"
    dtype = AMP_DTYPES[amp]
    return Precision(dtype, channels_last=dtype is not None or device.type == "cuda")
