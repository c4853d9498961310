"""FGSM, PGD and universal perturbations against a tiny network trained here on an easy task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from trainer.attacks import (RANGE_STD, PixelModel, Saturation, UapConfig, activation_layers, activation_objective,
                             apply_universal, fgsm, fit_perturbation, flip_rate, frozen, gd_uap, gduap_objective,
                             load_perturbation, mean_pixels, normalize_pixels, pgd, pixel_ce, prior_images,
                             random_perturbation, save_perturbation, universal_from_data)
from trainer.metrics import ConfusionMatrix
from trainer.transforms import normalize

from conftest import random_scene

K = 4


class Encoder(nn.Sequential):
    """f_enc with the project's interface: (B, 3, H, W) -> {"out": features}."""

    def forward(self, x):
        return {"out": super().forward(x)}


class TinyNet(nn.Module):
    """Two 3x3 convolutions and a 1x1 classifier; outputs {"t": logits} like SourceSeparationNet."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Encoder(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(16, K, 1)

    def forward(self, x):
        return {"t": self.classifier(self.backbone(x)["out"])}


def scenes(seed: int, n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """n coloured-shape scenes (the fixtures' generator): (n, 3, S, S) uint8, (n, S, S) int64."""
    rng = np.random.default_rng(seed)
    images, labels = zip(*(random_scene(rng, size, size) for _ in range(n)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.stack(labels)).long()


@pytest.fixture(scope="module")
def trained():
    """TinyNet after 60 Adam steps (about 1 s): val mIoU about 0.98 on held-out scenes."""
    torch.manual_seed(0)
    net = TinyNet()
    pm = PixelModel(net)
    x, y = scenes(0, 64)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        i = torch.randint(0, len(x), (16,))
        loss = pixel_ce(pm(x[i]), y[i], 255) / y[i].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return pm, scenes(1, 16)


def miou(pm: PixelModel, x: torch.Tensor, y: torch.Tensor) -> float:
    cm = ConfusionMatrix(K)
    with torch.no_grad():
        cm.update(y, pm(x).argmax(1))
    return cm.compute()["miou"]


def test_float_normalisation_equals_the_uint8_one():
    x = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    torch.testing.assert_close(normalize_pixels(x.float()), normalize(x))


def test_fgsm_and_pgd_lower_the_miou_of_a_trained_model(trained):
    pm, (x, y) = trained
    with frozen(pm.model):
        clean = miou(pm, x, y)
        attacked_fgsm = miou(pm, fgsm(pm, x, y, eps=8), y)
        attacked_pgd = miou(pm, pgd(pm, x, y, eps=8, steps=5, generator=torch.Generator().manual_seed(0)), y)
    assert clean > 0.95
    assert attacked_fgsm < clean - 0.03
    assert attacked_pgd < clean - 0.03
    assert attacked_pgd <= attacked_fgsm + 0.01  # iterating is at least as strong as one step


def test_attacks_never_leave_the_eps_ball_or_the_pixel_range(trained):
    pm, (x, y) = trained
    with frozen(pm.model):
        for adv in (fgsm(pm, x, y, eps=6), pgd(pm, x, y, eps=6, steps=4, step_size=5.0),
                    pgd(pm, x, y, eps=6, steps=3, random_start=False)):
            assert (adv - x.float()).abs().max() <= 6 + 1e-4
            assert adv.min() >= 0 and adv.max() <= 255
            assert (adv - x.float()).abs().max() > 5  # and they do use the budget


def test_pgd_one_full_step_from_the_centre_is_fgsm(trained):
    pm, (x, y) = trained
    with frozen(pm.model):
        torch.testing.assert_close(pgd(pm, x, y, eps=4, steps=1, step_size=4, random_start=False), fgsm(pm, x, y, 4))


def test_ignored_pixels_give_no_gradient(trained):
    pm, (x, y) = trained
    with frozen(pm.model):
        adv = fgsm(pm, x[:2], torch.full_like(y[:2], 255), eps=8)
    assert torch.equal(adv, x[:2].float())


def test_frozen_restores_flags_and_mode():
    net = TinyNet().train()
    net.classifier.requires_grad_(False)
    with frozen(net):
        assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.training and not net.classifier.weight.requires_grad and net.backbone[0].weight.requires_grad


def test_eps_must_be_positive(trained):
    pm, (x, y) = trained
    with pytest.raises(ValueError, match="^eps:"):
        fgsm(pm, x, y, eps=0)


# -- universal perturbations ------------------------------------------------------------------------
def test_universal_perturbation_is_the_same_for_every_image():
    delta = torch.randn(3, 5, 7) * 4
    x = torch.full((3, 3, 12, 16), 128, dtype=torch.uint8)  # mid-grey: nothing clips
    x[1, :, 0, 0] = 255  # ... but one pixel of one image, which must clip and nothing else
    added = apply_universal(x, delta) - x.float()  # (B, 3, H, W)
    expected = fit_perturbation(delta, (12, 16))
    torch.testing.assert_close(added[0], expected)
    torch.testing.assert_close(added[2], expected)
    keep = torch.ones(3, 12, 16, dtype=torch.bool)
    keep[:, 0, 0] = False
    torch.testing.assert_close(added[1][keep], expected[keep])


def test_tiling_repeats_from_the_top_left_and_resizing_keeps_the_size():
    delta = torch.arange(3 * 2 * 3, dtype=torch.float32).view(3, 2, 3)
    tiled = fit_perturbation(delta, (5, 7))
    assert tiled.shape == (3, 5, 7)
    torch.testing.assert_close(tiled[:, :2, :3], delta)
    torch.testing.assert_close(tiled[:, 2:4, 3:6], delta)
    torch.testing.assert_close(tiled[:, 4, 6], delta[:, 0, 0])
    assert fit_perturbation(delta, (5, 7), "resize").shape == (3, 5, 7)
    with pytest.raises(ValueError, match="^fit:"):
        fit_perturbation(delta, (5, 7), "stretch")


def test_npy_round_trip_in_pixel_units_hwc(tmp_path):
    delta = torch.rand(3, 6, 4) * 20 - 10
    path = save_perturbation(tmp_path / "uap.npy", delta, {"mode": "data", "eps": 10})
    raw = np.load(path)
    assert raw.shape == (6, 4, 3) and raw.dtype == np.float32  # the public releases' layout
    np.testing.assert_array_equal(raw[2, 1], delta[:, 2, 1].numpy())
    torch.testing.assert_close(load_perturbation(path), delta)
    assert json.loads((tmp_path / "uap.json").read_text())["eps"] == 10
    np.save(tmp_path / "release.npy", raw[None])  # the UAP release stores (1, H, W, 3)
    torch.testing.assert_close(load_perturbation(tmp_path / "release.npy"), delta)
    np.save(tmp_path / "bad.npy", np.zeros((3, 6, 4), np.float32))  # channels first: refused
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\)"):
        load_perturbation(tmp_path / "bad.npy")


def test_data_driven_uap_stays_within_eps_and_hurts(trained):
    pm, (x, y) = trained
    train_x, train_y = scenes(2, 32)
    batches = [(train_x[i:i + 8], train_y[i:i + 8]) for i in range(0, 32, 8)]
    with frozen(pm.model):
        delta = universal_from_data(pm, batches, torch.zeros(3, 32, 32), eps=12, alpha=1.5, iters=12)
        assert delta.shape == (3, 32, 32) and delta.abs().max() <= 12
        assert miou(pm, apply_universal(x, delta), y) < miou(pm, x, y) - 0.02  # on images it never saw


def test_gd_uap_without_data_raises_the_objective_and_stays_within_xi(trained):
    pm, _ = trained
    start = random_perturbation(24, eps=10, seed=0, device=torch.device("cpu"))
    layers = activation_layers(pm.model)
    assert len(layers) == 2  # the two ReLUs; convolutions are pre-activations
    objective = gduap_objective(pm, layers, prior_images("no-data", 1, 24, torch.Generator(), None))
    with frozen(pm.model):
        delta, log = gd_uap(objective, start, eps=10, iters=15, lr=0.5)
        before, after = objective(start), objective(delta)
    assert delta.abs().max() <= 10 and after > before
    assert log.iters == 15 and log.stopped == "iters"
    # "no data": the objective sees δ alone, i.e. on the mean image
    torch.testing.assert_close(objective(delta), activation_objective(pm, (mean_pixels() + delta)[None], layers))


def test_saturation_rule_fires_when_over_half_is_at_the_bound_and_stops_changing():
    rule = Saturation(eps=1.0)
    delta = torch.tensor([1.0, -1.0, 1.0, 0.2])  # 75% at ±ξ
    assert not rule.update(delta)  # from 0 to 0.75: still changing
    assert rule.update(delta) and rule.value == 0.75  # unchanged and > 0.5: rescale
    assert not Saturation(eps=1.0).update(torch.tensor([1.0, 0.0])) and not rule.update(delta / 2)
    half = Saturation(eps=1.0)
    half.update(torch.tensor([1.0, -1.0, 0.0, 0.0]))
    assert not half.update(torch.tensor([1.0, -1.0, 0.0, 0.0]))  # exactly half is not more than half


def test_gd_uap_halves_a_saturated_perturbation(trained):
    pm, _ = trained
    objective = gduap_objective(pm, activation_layers(pm.model), prior_images("no-data", 1, 8, torch.Generator(), None))
    with frozen(pm.model):
        # a small ξ and a large step: δ pins to the box within a few steps and the rule must fire
        delta, log = gd_uap(objective, torch.zeros(3, 8, 8), eps=0.5, iters=40, lr=0.5)
    assert log.rescales, "the saturation rule never fired"
    assert all(sat > 0.5 for _, sat in log.rescales)
    assert delta.abs().max() <= 0.5
    first = log.rescales[0][0]
    with frozen(pm.model):  # the same run stopped at the first rescale (deterministic): δ was halved
        halved, _ = gd_uap(objective, torch.zeros(3, 8, 8), eps=0.5, iters=first, lr=0.5)
    assert halved.abs().max() <= 0.25


def test_gd_uap_keeps_the_best_validated_delta_and_stops_on_patience():
    rates = iter([0.3, 0.5, 0.4, 0.2, 0.1])
    seen = []

    def validate(d):
        seen.append(d.clone())
        return next(rates)

    objective = lambda d: (d * torch.arange(d.numel()).view(d.shape)).sum()  # noqa: E731  any smooth ascent
    delta, log = gd_uap(objective, torch.zeros(3, 2, 2), eps=100, iters=100, lr=0.1, validate=validate,
                        val_every=5, patience=3)
    assert [s for s, _ in log.validations] == [5, 10, 15, 20, 25] and log.stopped == "patience"
    assert log.best_step == 10 and torch.equal(delta, seen[1])


def test_the_priors_use_no_images_noise_or_training_images():
    g = torch.Generator().manual_seed(0)
    assert prior_images("no-data", 4, 16, g, None)() is None
    noise = prior_images("range-prior", 64, 16, g, None)()
    assert noise.shape == (64, 3, 16, 16) and noise.min() >= 0 and noise.max() <= 255
    torch.testing.assert_close(noise.mean((0, 2, 3)), mean_pixels().view(3), atol=1.5, rtol=0)
    assert torch.allclose(noise.std((0, 2, 3)), torch.tensor(RANGE_STD), rtol=0.1)

    class Pool:
        def batch(self, n):
            return torch.full((n, 3, 16, 16), 7, dtype=torch.uint8)

    assert torch.equal(prior_images("all-data", 2, 16, g, Pool())(), Pool().batch(2))
    with pytest.raises(ValueError, match="needs training images"):
        prior_images("partial-data", 2, 16, g, None)


def test_flip_rate_counts_the_pixels_whose_prediction_changes():
    class Red:  # predicts class 1 where red > 100, else 0
        def __call__(self, x):
            r = x.float()[:, :1]
            return torch.cat([100 - r, r - 100], 1)

    x = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    x[0, 0] = torch.tensor([[95, 99], [50, 120]], dtype=torch.uint8)
    delta = torch.full((3, 2, 2), 3.0)  # 95 -> 98 stays, 99 -> 102 flips, 50 stays, 120 stays
    assert flip_rate(Red(), [x], delta) == pytest.approx(1 / 4)


def test_uap_config_names_bad_fields():
    for bad, field in [(dict(mode="partial"), "mode"), (dict(eps=-1), "eps"), (dict(out="uap.png"), "out"),
                       (dict(mode="data", shards=None), "shards"), (dict(size=4), "size"),
                       (dict(mode="partial-data", shards=None), "shards"), (dict(part=0), "part"),
                       (dict(mode="no-data", shards=None, val_images=4), "shards"), (dict(lr=0), "lr")]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            UapConfig(**{"checkpoint": "c.pt", "out": "u.npy", "shards": "out", **bad})
    assert UapConfig(checkpoint="c.pt", out="u.npy", mode="data-free").mode == "no-data"  # the old name
    assert UapConfig(checkpoint="c.pt", out="u.npy", mode="no-data").iters == 2000
