"""The streaming shard dataset: partitioning, shuffling, resume positions, real workers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from blendgen.shards.directory import ShardDir
from trainer.config import TrainConfig
from trainer.data import (ShardStream, batched, epoch_addresses, make_loader, make_units, rank_batches, rank_span,
                          shuffle_buffer, worker_part)
from trainer.transforms import eval_transform, pad_collate, train_transform


def stream(root, split="mixed", **kw) -> ShardStream:
    args = dict(transform=train_transform(32), batch_size=4, shuffle=True, drop_last=True, seed=0, unit=5)
    args.update(kw)
    return ShardStream(ShardDir.open(root / split), **args)


def keys_of(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


def test_units_cover_every_sample_once():
    units = make_units([13, 11], unit=5)
    assert units.tolist() == [[0, 0, 5], [0, 5, 10], [0, 10, 13], [1, 0, 5], [1, 5, 10], [1, 10, 11]]
    order = epoch_addresses(units, shuffle=True, seed=0, epoch=1)
    assert sorted(map(tuple, order.tolist())) == [(0, i) for i in range(13)] + [(1, i) for i in range(11)]


@pytest.mark.parametrize("sizes", [[13, 11], [0, 7, 0, 64, 1], [], [1000, 999, 5]])
@pytest.mark.parametrize("unit", [1, 3, 32, 64, 2000])
def test_units_and_order_are_those_of_the_per_unit_definition(sizes, unit):
    # The vectorised functions give exactly the rows of their definition, so runs recorded with
    # any unit (32 before issue 18) keep their order.
    rows = [(s, a, min(a + unit, n)) for s, n in enumerate(sizes) for a in range(0, n, unit)]
    units = make_units(sizes, unit)
    assert units.dtype == np.int64 and units.shape == (len(rows), 3) and units.tolist() == [list(r) for r in rows]
    for shuffle in (False, True):
        order = units[np.random.default_rng([7, 2]).permutation(len(units))] if shuffle else units
        want = [[s, i] for s, a, b in order.tolist() for i in range(a, b)]
        got = epoch_addresses(units, shuffle=shuffle, seed=7, epoch=2)
        assert got.dtype == np.int64 and got.shape == (len(want), 2) and got.tolist() == want


def test_shuffle_buffer_is_a_permutation_with_bounded_lookahead():
    out = list(shuffle_buffer(range(100), 8, np.random.default_rng(0)))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    # An item leaves the buffer no earlier than 8 positions before its place in the input.
    assert all(pos >= item - 8 for pos, item in enumerate(out))


def test_batched_keeps_a_short_tail():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("n,world,bs", [(24, 3, 4), (23, 2, 3), (5, 4, 2), (100, 3, 7)])
def test_partition_is_exact_and_even(n, world, bs):
    # Evaluation: every sample exactly once, rank sizes differ by at most one.
    spans = [rank_span(n, bs, r, world, drop_last=False) for r in range(world)]
    covered = [i for a, b in spans for i in range(a, b)]
    assert covered == list(range(n))
    assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1
    # Training: equal full batches per rank, fewer than world * bs dropped.
    spans = [rank_span(n, bs, r, world, drop_last=True) for r in range(world)]
    assert len({b - a for a, b in spans}) == 1 and (spans[0][1] - spans[0][0]) % bs == 0
    assert n - spans[-1][1] < world * bs
    # Workers split a rank's span into contiguous parts whose batches add up.
    for nw in (1, 2, 3, 5):
        parts = [worker_part((0, n), bs, w, nw) for w in range(nw)]
        assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
        assert sum(p.num_batches for p in parts) == -(-n // bs)


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_per_epoch_across_workers_and_ranks(shared_shards, workers):
    # 3 simulated ranks x 2 real worker processes = 6 consumers over 2 shards.
    seen = Counter()
    for rank in range(3):
        ds = stream(shared_shards, transform=eval_transform(), drop_last=False, rank=rank, world_size=3,
                    collate_fn=pad_collate)
        ds.set_epoch(2)
        keys = keys_of(make_loader(ds, workers=workers, pin_memory=False))
        assert len(keys) == len(range(*ds.span))
        seen.update(keys)
    assert sorted(seen) == [f"mixed-{k:04d}" for k in range(24)]
    assert set(seen.values()) == {1}


def test_training_ranks_take_equal_steps_without_repeats(shared_shards):
    per_rank = []
    for rank in range(3):
        ds = stream(shared_shards, batch_size=3, rank=rank, world_size=3)
        batches = list(make_loader(ds, workers=2, pin_memory=False))
        assert len(batches) == len(ds) and all(len(b["key"]) == 3 for b in batches)
        per_rank.append([k for b in batches for k in b["key"]])
    assert len({len(k) for k in per_rank}) == 1
    everything = [k for keys in per_rank for k in keys]
    assert len(everything) == len(set(everything)) == 24 - 24 % 9


def test_order_depends_on_seed_and_epoch_only(shared_shards):
    ds = stream(shared_shards)
    ds.set_epoch(0)
    first = keys_of(make_loader(ds, workers=2, pin_memory=False))
    again = keys_of(make_loader(ds, workers=2, pin_memory=False))
    ds.set_epoch(1)
    other = keys_of(make_loader(ds, workers=2, pin_memory=False))
    assert first == again and sorted(first) != first and first != other


def test_skipping_batches_resumes_the_same_sequence(shared_shards):
    ds = stream(shared_shards, batch_size=2)
    ds.set_epoch(4)
    full = list(make_loader(ds, workers=2, pin_memory=False))
    ds.set_epoch(4, skip_batches=3)
    rest = list(make_loader(ds, workers=2, pin_memory=False))
    assert [b["key"] for b in rest] == [b["key"] for b in full[3:]]
    # The same augmentation too: per-sample randomness does not depend on what was skipped.
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(rest, full[3:]))


def test_paired_transform_keeps_labels_aligned(shared_shards):
    ds = stream(shared_shards, batch_size=4, transform=train_transform(40, (0.5, 2.0)))
    batch = next(iter(make_loader(ds, workers=0, pin_memory=False)))
    assert batch["image"].shape == (4, 3, 40, 40) and batch["image"].dtype == torch.uint8
    assert batch["label"].shape == batch["phantom"].shape == (4, 40, 40)
    assert batch["label"].dtype == torch.int64 and batch["delta"].shape == (4,)
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 3, 255}


def test_too_few_samples_for_one_batch_per_rank_is_an_error(shared_shards):
    with pytest.raises(ValueError, match="do not fill one batch"):
        stream(shared_shards, split="val", batch_size=4, world_size=3)


# -- the order training sees: uniform, not dominant-grouped runs (issue 18) ----------------------


def test_default_epoch_order_is_a_permutation_that_splits_shard_runs(shared_shards):
    # With the buffer out of the way (1 entry), the default order is the epoch permutation itself:
    # every sample once, and a shard's consecutive samples (one dominant's blends, as blendgen mix
    # writes them) no longer follow each other. Units of 32 would keep ~22 of 23 neighbours.
    followers = 0
    for epoch in range(4):
        ds = ShardStream(ShardDir.open(shared_shards / "mixed"), train_transform(32), 4, shuffle=True,
                         drop_last=True, seed=0, shuffle_buffer=1)
        ds.set_epoch(epoch)
        keys = keys_of(make_loader(ds, workers=0, pin_memory=False))
        assert sorted(keys) == [f"mixed-{k:04d}" for k in range(24)]
        index = [int(k.split("-")[1]) for k in keys]
        followers += sum(b == a + 1 for a, b in zip(index, index[1:]))
    assert followers <= 12  # a uniform permutation of 24: about one per epoch


def test_rank_batches_are_the_batches_the_loader_yields(shared_shards):
    ds = stream(shared_shards, batch_size=3, unit=1, rank=1, world_size=2)
    ds.set_epoch(5)
    loaded = [b["key"] for b in make_loader(ds, workers=2, pin_memory=False)]
    first = {0: 0, 1: 13}  # shared_shards/mixed: shards of 13 and 11 samples, keys numbered across them
    planned = [[f"mixed-{first[s] + i:04d}" for s, i in batch]
               for batch in rank_batches([13, 11], 3, seed=0, epoch=5, rank=1, world_size=2, num_workers=2)]
    assert loaded == planned


def expected_uniform(groups: np.ndarray, draws: int) -> float:
    """Distinct groups expected among ``draws`` samples drawn without replacement."""
    n = int(groups.sum())
    miss = [np.prod((n - g - np.arange(draws)) / (n - np.arange(draws))) for g in groups]
    return len(groups) - float(np.sum(miss))


@pytest.mark.parametrize("unit,buffer,uniform", [(None, None, True), (32, 256, False)])
def test_training_defaults_reach_a_uniform_shuffles_statistics(unit, buffer, uniform):
    # A mix plan in miniature: 150 dominants of 20 consecutive blends, shards of 100. The first
    # 60 batches of 8 (TrainConfig's workers) hold as many distinct dominants as a uniform
    # shuffle's, within 5%, and as few repeats per batch, within 0.1; the old units of 32 in a
    # 256-sample buffer do not.
    config = TrainConfig(shards="-")
    unit, buffer = unit or config.unit, buffer or config.shuffle_buffer
    groups = np.full(150, 20)
    dominant = np.repeat(np.arange(150), groups)
    bs, nb, distinct, repeated = config.batch_size, 60, [], []
    for seed in range(5):
        batches = list(rank_batches([100] * 30, bs, seed=seed, num_workers=config.workers, unit=unit,
                                    buffer=buffer))[:nb]
        ids = [dominant[[100 * s + i for s, i in b]] for b in batches]
        distinct.append(len(np.unique(np.concatenate(ids))))
        repeated.append(np.mean([bs - len(np.unique(d)) for d in ids]))
    want_distinct, want_repeated = expected_uniform(groups, bs * nb), bs - expected_uniform(groups, bs)
    close = abs(np.mean(distinct) / want_distinct - 1) <= 0.05 and abs(np.mean(repeated) - want_repeated) <= 0.1
    assert close == uniform, (np.mean(distinct), want_distinct, np.mean(repeated), want_repeated)
