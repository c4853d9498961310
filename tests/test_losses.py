"""Stage-1, stage-2 and baseline losses against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from trainer.losses import (
    ce_loss,
    median_frequency_weights,
    mixup_loss,
    per_image_ce,
    phantom_activation,
    stage1_loss,
    stage2_loss,
)

K, B, H, W = 4, 2, 6, 5
IGNORE = 255


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _outputs(t=None, p=None, ss=None, fill=0.0):
    make = lambda x: torch.full((B, K, H, W), fill) if x is None else x  # noqa: E731
    return {"t": make(t), "p": make(p), "ss": make(ss)}


def _confident(label, margin=20.0):
    """Logits (B, K, H, W) that put `margin` on the labelled class: CE ~ exp(-margin) ~ 0."""
    return torch.nn.functional.one_hot(label.clamp(max=K - 1), K).permute(0, 3, 1, 2) * margin


def _reference_ce(logits, target):
    """Mean CE of one image over its labelled pixels, by explicit loops."""
    total, n = 0.0, 0
    for i in range(target.shape[0]):
        for j in range(target.shape[1]):
            c = int(target[i, j])
            if c == IGNORE:
                continue
            total -= torch.log_softmax(logits[:, i, j].double(), 0)[c].item()
            n += 1
    return total / n if n else 0.0


def test_constant_logits_give_log_k_for_every_term():
    label = torch.randint(0, K, (B, H, W))
    phantom = torch.randint(0, K, (B, H, W))
    loss, terms = stage1_loss(_outputs(), label, phantom, torch.tensor([0.7, 0.95]))
    for name in ("ce_ss", "ce_t", "ce_p"):
        assert terms[name] == pytest.approx(math.log(K))
    # log K + δ log K + (1-δ) log K = 2 log K, whatever δ
    assert loss.item() == pytest.approx(2 * math.log(K), rel=1e-6)
    assert terms["loss"] == pytest.approx(loss.item())


def test_stage1_weights_each_sample_by_its_own_delta():
    label = torch.randint(0, K, (B, H, W))
    phantom = torch.randint(0, K, (B, H, W))
    # Dominant heads perfect, phantom head uniform: only (1-δ)·log K is left, per sample.
    out = _outputs(t=_confident(label), ss=_confident(label))
    delta = torch.tensor([0.6, 0.9])
    loss, terms = stage1_loss(out, label, phantom, delta)
    expected = ((1 - 0.6) * math.log(K) + (1 - 0.9) * math.log(K)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert terms["ce_p"] == pytest.approx(math.log(K))  # logged unweighted

    # Now the phantom is perfect and the dominant heads uniform: ss full, t weighted by δ.
    out = _outputs(p=_confident(phantom))
    loss, _ = stage1_loss(out, label, phantom, delta)
    expected = math.log(K) + (0.6 + 0.9) / 2 * math.log(K)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_stage1_matches_explicit_formula_on_random_logits():
    out = {k: torch.randn(B, K, H, W) for k in ("t", "p", "ss")}
    label = torch.randint(0, K, (B, H, W))
    phantom = torch.randint(0, K, (B, H, W))
    label[0, :2] = IGNORE
    phantom[1, :, :3] = IGNORE
    delta = torch.tensor([0.75, 0.8])
    loss, terms = stage1_loss(out, label, phantom, delta)
    per_sample = [
        _reference_ce(out["ss"][b], label[b])
        + delta[b].item() * _reference_ce(out["t"][b], label[b])
        + (1 - delta[b].item()) * _reference_ce(out["p"][b], phantom[b])
        for b in range(B)
    ]
    assert loss.item() == pytest.approx(sum(per_sample) / B, rel=1e-5)
    ce_t = sum(_reference_ce(out["t"][b], label[b]) for b in range(B)) / B
    assert terms["ce_t"] == pytest.approx(ce_t, rel=1e-5)


def test_ignored_pixels_do_not_count():
    label = torch.randint(0, K, (B, H, W))
    logits = torch.randn(B, K, H, W)
    masked = label.clone()
    masked[:, 3:] = IGNORE
    garbage = logits.clone()
    garbage[:, :, 3:] = torch.randn(B, K, H - 3, W) * 100  # must not matter
    a = per_image_ce(logits[:, :, :3], label[:, :3])
    b = per_image_ce(garbage, masked)
    assert torch.allclose(a, b)


def test_cross_entropy_is_averaged_per_image_then_over_the_batch():
    # Image 0 has one labelled pixel, image 1 all 30: each weighs half of the batch mean.
    logits = torch.randn(B, K, H, W)
    label = torch.randint(0, K, (B, H, W))
    label[0] = IGNORE
    label[0, 0, 0] = 2
    loss, _ = ce_loss({"t": logits}, label)
    expected = (_reference_ce(logits[0], label[0]) + _reference_ce(logits[1], label[1])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_all_ignore_sample_is_finite_and_contributes_nothing():
    out = {k: torch.randn(B, K, H, W, requires_grad=True) for k in ("t", "p", "ss")}
    label = torch.randint(0, K, (B, H, W))
    phantom = torch.randint(0, K, (B, H, W))
    label[0] = IGNORE
    phantom[0] = IGNORE
    delta = torch.tensor([0.8, 0.8])
    loss, terms = stage1_loss(out, label, phantom, delta)
    assert all(math.isfinite(v) for v in terms.values())
    only_second = (
        _reference_ce(out["ss"][1].detach(), label[1])
        + 0.8 * _reference_ce(out["t"][1].detach(), label[1])
        + 0.2 * _reference_ce(out["p"][1].detach(), phantom[1])
    )
    assert loss.item() == pytest.approx(only_second / 2, rel=1e-5)
    loss.backward()
    for s in out.values():
        assert torch.isfinite(s.grad).all()
        assert s.grad[0].abs().sum() == 0  # the all-ignore image gets no gradient

    l2, t2 = stage2_loss({k: v.detach() for k, v in out.items()}, torch.full((B, H, W), IGNORE))
    assert math.isfinite(l2.item()) and t2["ce_t"] == 0


def test_standard_sample_in_stage1_has_no_phantom_term():
    # A standard (unblended) sample: δ = 1 and a phantom label of all ignore.
    out = {k: torch.randn(B, K, H, W) for k in ("t", "p", "ss")}
    label = torch.randint(0, K, (B, H, W))
    loss, terms = stage1_loss(out, label, torch.full((B, H, W), IGNORE), torch.ones(B))
    assert terms["ce_p"] == 0
    assert loss.item() == pytest.approx(terms["ce_ss"] + terms["ce_t"], rel=1e-5)


def test_without_ssh_the_first_term_is_dropped():
    out = {k: torch.randn(B, K, H, W) for k in ("t", "p")}
    label = torch.randint(0, K, (B, H, W))
    phantom = torch.randint(0, K, (B, H, W))
    delta = torch.tensor([0.7, 1.0])
    loss, terms = stage1_loss(out, label, phantom, delta)
    assert set(terms) == {"ce_t", "ce_p", "loss"}
    with_ssh, _ = stage1_loss({**out, "ss": out["t"]}, label, phantom, delta)
    assert with_ssh.item() == pytest.approx(loss.item() + terms["ce_t"], rel=1e-5)


def test_ppa_is_log_eps_plus_summed_relu_per_image():
    s_p = torch.full((B, K, H, W), -3.0)
    s_p[0, 1, 2, 3] = 2.0
    s_p[0, 0, 0, 0] = 0.5
    s_p[1] = 0.1
    eps = 1e-6
    ppa = phantom_activation(s_p, eps)
    assert ppa[0].item() == pytest.approx(math.log(eps + 2.5))
    assert ppa[1].item() == pytest.approx(math.log(eps + 0.1 * K * H * W), rel=1e-6)
    # A fully suppressed phantom: log ε, finite.
    assert phantom_activation(torch.full((1, K, H, W), -1.0), eps).item() == pytest.approx(
        math.log(eps)
    )


def test_stage2_is_ce_on_dominant_plus_mean_ppa():
    label = torch.randint(0, K, (B, H, W))
    s_p = torch.rand(B, K, H, W) - 0.5
    out = {"t": torch.zeros(B, K, H, W), "p": s_p, "ss": torch.randn(B, K, H, W)}
    loss, terms = stage2_loss(out, label, eps=1e-6)
    ppa = sum(math.log(1e-6 + s_p[b].clamp(min=0).sum().item()) for b in range(B)) / B
    assert terms["ce_t"] == pytest.approx(math.log(K))
    assert terms["ppa"] == pytest.approx(ppa, rel=1e-5)
    assert loss.item() == pytest.approx(math.log(K) + ppa, rel=1e-5)
    assert set(terms) == {"ce_t", "ppa", "loss"}


def test_ppa_gradient_pushes_only_positive_phantom_logits_down():
    s_p = torch.tensor([[[[1.0, -1.0], [3.0, 0.0]]]], requires_grad=True)  # (1, 1, 2, 2)
    phantom_activation(s_p, eps=0.0).sum().backward()
    # d/dx log Σ relu = 1/Σ on positive entries, 0 elsewhere; Σ = 4.
    assert torch.allclose(s_p.grad, torch.tensor([[[[0.25, 0.0], [0.25, 0.0]]]]))


def test_losses_accept_bf16_logits():
    label = torch.randint(0, K, (B, H, W))
    out = {k: torch.randn(B, K, H, W).bfloat16() for k in ("t", "p", "ss")}
    loss, _ = stage1_loss(out, label, label, torch.tensor([0.7, 0.8]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss, _ = stage2_loss(out, label)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_mixup_loss_with_delta_one_is_plain_ce():
    out = {"t": torch.randn(B, K, H, W)}
    label = torch.randint(0, K, (B, H, W))
    phantom = torch.randint(0, K, (B, H, W))
    a, _ = mixup_loss(out, label, phantom, torch.ones(B))
    b, terms = ce_loss(out, label)
    assert a.item() == pytest.approx(b.item())
    assert set(terms) == {"ce_t", "loss"}
    half, _ = mixup_loss(out, label, phantom, torch.full((B,), 0.5))
    c, _ = ce_loss(out, phantom)
    assert half.item() == pytest.approx((b.item() + c.item()) / 2, rel=1e-6)


def test_weighted_per_image_ce_is_the_weighted_mean_of_each_image():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0, :] = IGNORE
    weight = torch.tensor([0.5, 2.0, 1.0])
    got = per_image_ce(logits, target, IGNORE, weight)
    for b in range(2):
        keep = target[b] != IGNORE
        ce = torch.nn.functional.cross_entropy(logits[b:b + 1], target[b:b + 1], ignore_index=IGNORE,
                                               reduction="none")[0][keep]
        w = weight[target[b][keep]]
        assert torch.allclose(got[b], (w * ce).sum() / w.sum())
    assert torch.allclose(per_image_ce(logits, target, IGNORE, torch.ones(3)), per_image_ce(logits, target, IGNORE))
    assert torch.equal(per_image_ce(logits, torch.full_like(target, IGNORE), IGNORE, weight), torch.zeros(2))


def test_median_frequency_weights_by_hand():
    # class 0: 10 of the 100 pixels of the images holding it; 1: 100 of 100; 2: absent; 3: 1 of 10
    weights = median_frequency_weights([10, 100, 0, 1], [100, 100, 50, 10])
    np.testing.assert_allclose(weights, [1.0, 0.1, 0.0, 1.0])  # median frequency 0.1
