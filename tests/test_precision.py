"""trainer.precision: what --amp resolves to on a device, and that the fast path computes the same network."""

from __future__ import annotations

import pytest
import torch

from trainer.model import ModelConfig, build_model
from trainer.precision import native_bf16, resolve_precision
from trainer.transforms import normalize

CPU = torch.device("cpu")


def _cpu_bf16(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize("avx512_bf16, amx", [(True, False), (False, True)])
def test_auto_is_bf16_channels_last_on_a_cpu_that_computes_bf16(monkeypatch, avx512_bf16, amx):
    _cpu_bf16(monkeypatch, avx512_bf16, amx)
    p = resolve_precision("auto", CPU)
    assert native_bf16(CPU) and p.dtype is torch.bfloat16 and p.channels_last and p.name == "bf16"


def test_auto_is_fp32_in_the_default_layout_on_a_cpu_that_would_emulate_bf16(monkeypatch):
    _cpu_bf16(monkeypatch, False, False)
    p = resolve_precision("auto", CPU)
    assert not native_bf16(CPU) and p.dtype is None and not p.channels_last and p.name == "fp32"


def test_explicit_modes_and_a_bad_one(monkeypatch):
    _cpu_bf16(monkeypatch, True, True)
    assert resolve_precision("none", CPU).name == "fp32" and not resolve_precision("none", CPU).channels_last
    assert resolve_precision("bf16", CPU).channels_last
    assert resolve_precision("fp16", CPU).dtype is torch.float16
    with pytest.raises(ValueError, match="^amp: expected"):
        resolve_precision("int8", CPU)


def test_bf16_channels_last_computes_what_fp32_computes():
    """The same weights on the same images: the bf16/NHWC logits stay within bf16's rounding of fp32's."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=5, backbone="resnet18")).eval()
    x = torch.randint(0, 256, (2, 3, 64, 80), dtype=torch.uint8)
    with torch.inference_mode():
        ref = model(normalize(x))["t"]
        fast = resolve_precision("bf16", CPU)
        fast.prepare_model(model)
        with fast.autocast(CPU):
            out = model(fast.prepare_input(normalize(x)))["t"].float()
    assert out.shape == ref.shape == (2, 5, 64, 80)
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights fp32
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.05, f"bf16 logits differ from fp32 by {rel:.3f} (relative L2)"
