"""ConfusionMatrix against a hand-worked case and an independent set-based implementation."""

import math
import multiprocessing as mp

import numpy as np
import pytest
import torch
import torch.distributed as dist

from trainer.metrics import ConfusionMatrix

IGNORE = 255


def test_hand_worked_example():
    target = torch.tensor([0, 0, 1, 1, 2, IGNORE])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])  # the last pixel is ignored whatever its prediction
    cm = ConfusionMatrix(3)
    cm.update(target, pred)
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    r = cm.compute()
    # class 0: TP 1, union 2 + 2 - 1 = 3; class 1: TP 2, union 2 + 3 - 2 = 3; class 2: TP 0, union 1
    assert r["iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert r["miou"] == pytest.approx(1 / 3)
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    assert r["mean_acc"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_class_absent_from_targets_and_predictions_is_excluded():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0]))
    r = cm.compute()
    assert r["iou"][3] is None
    assert r["miou"] == pytest.approx(1 / 3)  # as in the 3-class case
    assert r["mean_acc"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_predicted_but_absent_class_counts_with_iou_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0]), torch.tensor([0, 2]))
    r = cm.compute()
    assert r["iou"] == [0.5, None, 0.0]
    assert r["miou"] == pytest.approx(0.25)


def _set_based_iou(targets, preds, num_classes):
    """Per-class IoU over all pixels of all images as |P ∩ G| / |P ∪ G| of pixel-index sets."""
    t = np.concatenate([a.ravel() for a in targets])
    p = np.concatenate([a.ravel() for a in preds])
    labelled = set(np.flatnonzero(t != IGNORE).tolist())
    ious = []
    for c in range(num_classes):
        gt = set(np.flatnonzero(t == c).tolist())
        pr = set(np.flatnonzero(p == c).tolist()) & labelled
        union = gt | pr
        ious.append(len(gt & pr) / len(union) if union else None)
    return ious


def test_matches_independent_set_based_iou_over_several_updates():
    rng = np.random.default_rng(0)
    K = 6
    targets, preds = [], []
    cm = ConfusionMatrix(K)
    for shape in [(2, 17, 23), (1, 40, 9), (3, 5, 5)]:
        t = rng.integers(0, K - 1, shape)  # class K-1 never in the targets
        t[rng.random(shape) < 0.2] = IGNORE
        p = np.where(rng.random(shape) < 0.6, t, rng.integers(0, K, shape))
        p[p == IGNORE] = 0
        targets.append(t)
        preds.append(p)
        cm.update(torch.from_numpy(t), torch.from_numpy(p))
    expected = _set_based_iou(targets, preds, K)
    got = cm.compute()
    for a, b in zip(got["iou"], expected):
        assert (a is None) == (b is None) and (a is None or a == pytest.approx(b))
    present = [v for v in expected if v is not None]
    assert got["miou"] == pytest.approx(sum(present) / len(present))
    t = np.concatenate([a.ravel() for a in targets])
    p = np.concatenate([a.ravel() for a in preds])
    keep = t != IGNORE
    assert got["pixel_acc"] == pytest.approx((t[keep] == p[keep]).mean())


def test_miou_is_from_the_summed_matrix_not_a_mean_of_images():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]))  # per-image mIoU 0.375
    cm.update(torch.tensor([1]), torch.tensor([1]))  # per-image mIoU 1.0
    # summed: class 0 TP 3 union 4, class 1 TP 1 union 2
    assert cm.compute()["miou"] == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_accepts_any_integer_dtype_and_shape():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 1], [2, IGNORE]], dtype=torch.uint8)
    cm.update(target, torch.tensor([[0, 1], [2, 1]]))
    assert cm.mat.sum() == 3 and cm.mat.diag().tolist() == [1, 1, 1]


def test_out_of_range_ids_and_shape_mismatch_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target"):
        cm.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="pred"):
        cm.update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="differ"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))
    assert cm.mat.sum() == 0


def test_empty_matrix_gives_nan_and_all_ignore_update_is_a_no_op():
    cm = ConfusionMatrix(3)
    cm.update(torch.full((4, 4), IGNORE), torch.zeros(4, 4, dtype=torch.long))
    r = cm.compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_acc"]) and r["iou"] == [None] * 3


def test_reset_merge_and_state_dict_round_trip():
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    b.update(torch.tensor([2, 2]), torch.tensor([2, 0]))
    a.merge(b)
    assert a.mat.sum() == 4
    c = ConfusionMatrix(3)
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.mat, a.mat) and c.compute() == a.compute()
    a.reset()
    assert a.mat.sum() == 0 and c.mat.sum() == 4
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(4))
    assert "mIoU" in str(c)


def test_reduce_is_a_no_op_without_a_process_group():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.reduce_from_all_processes()
    assert cm.mat.tolist() == [[1, 0], [0, 1]]


def test_reduce_all_reduces_the_matrix_with_sum(monkeypatch):
    # The collective faked: another rank holding `other`. The real two-process run is below.
    other = torch.tensor([[0, 0], [3, 4]])
    calls = []

    def all_reduce(tensor, op):
        calls.append(op)
        tensor += other

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.reduce_from_all_processes()
    assert calls == [dist.ReduceOp.SUM] and cm.mat.tolist() == [[1, 0], [3, 5]]


def _reduce_worker(rank, world_size, init_file, results):
    store = f"file://{init_file}"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world_size)
    try:
        cm = ConfusionMatrix(3)
        if rank == 0:
            cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
        else:
            cm.update(torch.tensor([2, 2]), torch.tensor([2, 2]))
        cm.reduce_from_all_processes()
        results.put((rank, cm.mat.tolist()))
    finally:
        dist.destroy_process_group()


def test_reduce_sums_the_matrices_of_all_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_reduce_worker, args=(r, 2, tmp_path / "store", results)) for r in (0, 1)
    ]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    expected = [[1, 0, 0], [1, 1, 0], [0, 0, 2]]
    assert got == {0: expected, 1: expected}
