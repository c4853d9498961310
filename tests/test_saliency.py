"""Salient object detection (IJCV Table 7): metrics against hand-worked cases, the datasets as they
ship, pseudo labels, the saliency shards and pairing, training and the report, end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.saliency import BETA2, SaliencyMeter, fbeta, saliency_map


def _levels(*rows) -> torch.Tensor:
    """A (1, H, W) saliency map from 8-bit levels, exact after the meter's quantisation."""
    return torch.tensor([rows], dtype=torch.float64) / 255


def _f(p: float, r: float) -> float:
    return 0.0 if p == r == 0 else (1 + BETA2) * p * r / (BETA2 * p + r)


# -- metrics ---------------------------------------------------------------------------------------
def test_one_image_by_hand():
    # GT salient at the top-left pixel; map levels 255 (on it), 100, 0, 0.
    meter = SaliencyMeter()
    meter.update(_levels([255, 100], [0, 0]), torch.tensor([[[1, 0], [0, 0]]]))
    s = meter.compute()
    # threshold 0: all four pixels -> P 1/4, R 1; 1..100: two -> P 1/2; 101..255: one -> P 1.
    assert s["precision"][0] == 0.25 and s["precision"][1] == s["precision"][100] == 0.5
    assert s["precision"][101] == s["precision"][255] == 1.0 and set(s["recall"]) == {1.0}
    assert s["max_fbeta"] == 1.0 and s["best_threshold"] == 101
    expected_mean = (_f(0.25, 1) + 100 * _f(0.5, 1) + 155 * 1.0) / 256
    assert s["mean_fbeta"] == pytest.approx(expected_mean, abs=1e-12)
    assert s["mae"] == pytest.approx(100 / 255 / 4, abs=1e-12)


def test_empty_ground_truth_scores_one_only_where_nothing_is_predicted():
    meter = SaliencyMeter()
    meter.update(_levels([0, 50], [0, 0]), torch.zeros(1, 2, 2, dtype=torch.long))
    s = meter.compute()
    # recall 0/0 = 1 everywhere; precision 0 while anything is predicted (thresholds 0..50), then 0/0 = 1.
    assert s["recall"] == [1.0] * 256
    assert s["precision"][:51] == [0.0] * 51 and s["precision"][51:] == [1.0] * 205
    assert s["fbeta"][:51] == [0.0] * 51 and s["fbeta"][51:] == [1.0] * 205
    assert s["max_fbeta"] == 1.0 and s["mean_fbeta"] == pytest.approx(205 / 256)
    assert s["mae"] == pytest.approx(50 / 255 / 4)


def test_full_ground_truth():
    meter = SaliencyMeter()
    meter.update(_levels([255, 255], [0, 255]), torch.ones(1, 2, 2, dtype=torch.long))
    s = meter.compute()
    # threshold 0 takes all four pixels (P = R = 1); above it three of four: P 1, R 3/4.
    assert s["precision"] == [1.0] * 256
    assert s["recall"][0] == 1.0 and s["recall"][1:] == [0.75] * 255
    assert s["max_fbeta"] == 1.0 and s["best_threshold"] == 0
    assert s["mean_fbeta"] == pytest.approx((1 + 255 * _f(1, 0.75)) / 256)
    assert s["mae"] == pytest.approx(0.25)


def test_precision_and_recall_are_averaged_over_images_before_f():
    a, b = SaliencyMeter(), SaliencyMeter()
    maps = torch.cat([_levels([255, 100], [0, 0]), _levels([0, 50], [0, 0])])  # (2, 2, 2)
    target = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    a.update(maps, target)  # one batch of two
    b.update(maps[:1], target[:1])  # the same images one by one
    b.update(maps[1:], target[1:])
    sa, sb = a.compute(), b.compute()
    assert sa["fbeta"] == sb["fbeta"] and sa["mae"] == sb["mae"] and sa["images"] == 2
    p40 = (0.5 + 0.0) / 2  # threshold 40: image 1 P 1/2, image 2 P 0 (its 50 is still predicted)
    assert sa["precision"][40] == p40 and sa["recall"][40] == 1.0
    assert sa["fbeta"][40] == pytest.approx(_f(p40, 1.0))
    assert sa["mae"] == pytest.approx((100 / 255 / 4 + 50 / 255 / 4) / 2)


def test_ignored_pixels_count_for_nothing():
    meter = SaliencyMeter()
    meter.update(_levels([255, 200], [0, 0]), torch.tensor([[[1, 255], [0, 255]]]))
    s = meter.compute()
    assert s["max_fbeta"] == 1.0 and s["mae"] == 0.0  # the 200 on an ignored pixel is not an error
    padded_away = SaliencyMeter()
    padded_away.update(_levels([0, 0], [0, 0]), torch.full((1, 2, 2), 255))
    assert padded_away.compute()["images"] == 0 and math.isnan(padded_away.compute()["max_fbeta"])


def test_labels_other_than_zero_and_one_are_refused():
    with pytest.raises(ValueError, match="0 \\(background\\) and 1 \\(salient\\)"):
        SaliencyMeter().update(_levels([0, 0], [0, 0]), torch.tensor([[[0, 2], [0, 0]]]))


def test_fbeta_weighs_precision_more_than_recall():
    assert float(fbeta(torch.tensor(0.9), torch.tensor(0.5))) > float(fbeta(torch.tensor(0.5), torch.tensor(0.9)))
    assert float(fbeta(torch.tensor(0.0), torch.tensor(0.0))) == 0.0


def test_saliency_map_is_the_salient_probability():
    logits = torch.tensor([[[[0.0]], [[math.log(3)]]]])  # (1, 2, 1, 1): P(salient) = 3/4
    assert saliency_map(logits).item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="two-class"):
        saliency_map(torch.zeros(1, 3, 2, 2))
