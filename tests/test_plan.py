"""Plans: counts, ranges and determinism of every pairing strategy (BMVC 3.1, Table 5a)."""

import re

import numpy as np
import pytest

from blendgen.generation.plan import DeltaSpec, make_plan, parse_delta, pick_excluding, row_key


def presence_matrix(clusters: list[list[int]], n: int) -> np.ndarray:
    """(n, N) image x class presence from the member lists of N clusters."""
    p = np.zeros((n, len(clusters)), dtype=bool)
    for k, members in enumerate(clusters):
        p[members, k] = True
    return p


# Cluster 3 holds only image 5 and cluster 4 is empty: both cases the plan must skip and count.
CLUSTERS = [[0, 1, 2, 3], [1, 4, 6], [2, 3, 6, 7], [5], []]
PRESENCE = presence_matrix(CLUSTERS, 8)
IDS = [f"img{i}" for i in range(8)]


# -- δ ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, lo, hi", [("0.7:1.0", 0.7, 1.0), ("0.6", 0.6, 0.6), (" 0.5 : 1 ", 0.5, 1.0), ("1", 1.0, 1.0)])
def test_parse_delta_accepts_a_range_or_one_value(text, lo, hi):
    spec = parse_delta(text)
    assert (spec.lo, spec.hi) == (lo, hi)
    assert spec.fixed == (lo == hi)


@pytest.mark.parametrize("text, message", [
    ("0.4:1", "outside [0.5, 1]"), ("0.7:1.2", "outside [0.5, 1]"), ("0.9:0.8", "lower bound 0.9 is above"),
    ("abc", "expected LO:HI"), ("0.7:", "expected LO:HI"), ("0.6:0.7:0.8", "expected LO:HI"), ("", "expected LO:HI"),
    ("nan", "finite"),
])
def test_parse_delta_rejects_bad_specs_naming_the_field(text, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_delta(text)
    assert str(info.value).startswith("delta:")


def test_delta_draws_stay_in_range_and_fixed_is_exact():
    u = np.linspace(0, 1, 101)[:-1]
    d = DeltaSpec(0.7, 1.0).draw(u)
    assert d.dtype == np.float32 and d.min() >= np.float32(0.7) and d.max() <= 1.0
    assert np.all(DeltaSpec(0.6, 0.6).draw(u) == np.float32(0.6))


# -- clustered (C_fb) ---------------------------------------------------------------------------
def test_clustered_each_member_yields_n_minus_1_samples_minus_counted_skips():
    plan = make_plan(PRESENCE, "clustered", seed=3)
    n_clusters = PRESENCE.shape[1]
    rows = plan.rows
    for k, members in enumerate(CLUSTERS):
        for a in members:
            mine = rows[(rows["k"] == k) & (rows["dominant"] == a)]
            # Every member pairs with every other cluster but the empty cluster 4.
            assert sorted(mine["j"].tolist()) == sorted(set(range(n_clusters)) - {k, 4}), (k, a)
    members_total = sum(len(c) for c in CLUSTERS)
    assert plan.skipped == {"phantom_cluster_only_dominant": 0, "phantom_cluster_empty": members_total}
    assert len(rows) + sum(plan.skipped.values()) == members_total * (n_clusters - 1)


def test_clustered_counts_a_phantom_cluster_holding_only_the_dominant():
    # Image 0 is alone in cluster 1 and shares cluster 0 with image 1.
    presence = presence_matrix([[0, 1], [0]], 2)
    plan = make_plan(presence, "clustered", seed=0)
    assert plan.skipped == {"phantom_cluster_only_dominant": 1, "phantom_cluster_empty": 0}  # (k=0, a=0, j=1)
    got = sorted((int(r["dominant"]), int(r["phantom"]), int(r["k"]), int(r["j"])) for r in plan.rows)
    assert got == [(0, 1, 1, 0), (1, 0, 0, 1)]
    assert len(plan) + 1 == 3 * (2 - 1)  # three cluster memberships, N - 1 = 1 sample each


def test_clustered_phantom_comes_from_cluster_j_and_is_never_the_dominant():
    plan = make_plan(PRESENCE, "clustered", seed=1)
    for r in plan.rows:
        assert r["phantom"] in CLUSTERS[r["j"]]
        assert r["dominant"] in CLUSTERS[r["k"]]
        assert r["phantom"] != r["dominant"] and r["j"] != r["k"]
    pairs = {(int(r["k"]), int(r["j"])) for r in plan.rows}
    assert pairs == {(k, j) for k in range(4) for j in range(4) if k != j}  # every non-empty ordered pair


def test_clustered_phantom_draw_is_uniform_over_cluster_without_dominant():
    # Big clusters, many seeds: image 0's phantom from cluster 1 = {0, 1, 2, 3} is 1, 2 or 3.
    presence = presence_matrix([[0], [0, 1, 2, 3]], 4)
    picks = []
    for seed in range(300):
        rows = make_plan(presence, "clustered", seed=seed).rows
        picks.append(int(rows[(rows["dominant"] == 0) & (rows["k"] == 0)]["phantom"][0]))
    counts = np.bincount(picks, minlength=4)
    assert counts[0] == 0 and counts[1:].min() > 70


def test_delta_stays_in_the_requested_range():
    plan = make_plan(PRESENCE, "clustered", delta=parse_delta("0.55:0.65"), seed=0)
    assert plan.rows["delta"].min() >= np.float32(0.55) and plan.rows["delta"].max() <= np.float32(0.65)
    assert len(np.unique(plan.rows["delta"])) > 1
    fixed = make_plan(PRESENCE, "clustered", delta=parse_delta("0.8"), seed=0)
    assert np.all(fixed.rows["delta"] == np.float32(0.8))


def test_plan_is_deterministic_from_the_seed():
    a, b = make_plan(PRESENCE, "clustered", seed=7), make_plan(PRESENCE, "clustered", seed=7)
    assert a.rows.tobytes() == b.rows.tobytes() and a.fingerprint(IDS) == b.fingerprint(IDS)
    c = make_plan(PRESENCE, "clustered", seed=8)
    assert a.rows.tobytes() != c.rows.tobytes() and a.fingerprint(IDS) != c.fingerprint(IDS)


def test_pairs_do_not_depend_on_the_delta_spec():
    wide = make_plan(PRESENCE, "clustered", delta=parse_delta("0.5:1"), seed=2)
    narrow = make_plan(PRESENCE, "clustered", delta=parse_delta("0.9"), seed=2)
    for field in ("dominant", "phantom", "k", "j"):
        assert np.array_equal(wide.rows[field], narrow.rows[field])


def test_rows_sharing_a_dominant_are_contiguous_and_groups_are_shuffled():
    rng = np.random.default_rng(0)
    presence = rng.random((60, 6)) < 0.3
    presence[np.arange(60), rng.integers(0, 6, 60)] = True
    plan = make_plan(presence, "clustered", seed=0)
    groups = list(zip(plan.rows["dominant"].tolist(), plan.rows["k"].tolist()))
    runs = [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
    assert len(runs) == len(set(runs)) == int(presence.sum())  # one run per (image, cluster)
    assert [k for _, k in runs] != sorted(k for _, k in runs)  # not in cluster order


# -- ablations (BMVC Table 5a) ------------------------------------------------------------------
def test_random_pairs_each_image_with_ten_others_by_default():
    plan = make_plan(PRESENCE, "random", seed=0)
    assert plan.pairs == 10 and len(plan) == 8 * 10
    assert np.array_equal(np.bincount(plan.rows["dominant"]), np.full(8, 10))
    assert np.all(plan.rows["phantom"] != plan.rows["dominant"]) and np.all(plan.rows["k"] == -1)
    assert len(make_plan(PRESENCE, "random", seed=0, pairs=3)) == 24


def test_within_pairs_stay_inside_the_cluster():
    plan = make_plan(PRESENCE, "within", seed=0)
    for r in plan.rows:
        assert r["k"] == r["j"] and r["phantom"] in CLUSTERS[r["k"]] and r["phantom"] != r["dominant"]
    assert len(plan) == sum(len(c) for c in CLUSTERS) - 1  # cluster 3 = {5} has no partner
    assert plan.skipped == {"cluster_only_dominant": 1}


def test_random_fixed_blends_with_the_papers_delta_0_6():
    plan = make_plan(PRESENCE, "random-fixed", seed=0)
    assert str(plan.delta) == "0.6" and np.all(plan.rows["delta"] == np.float32(0.6))
    with pytest.raises(ValueError, match="delta: random-fixed"):
        make_plan(PRESENCE, "random-fixed", delta=parse_delta("0.7:1"))


def test_half_blends_one_half_and_keeps_the_other_standard():
    plan = make_plan(PRESENCE, "half", seed=0)
    standard = plan.rows[plan.rows["phantom"] < 0]
    blended = plan.rows[plan.rows["phantom"] >= 0]
    assert len(standard) == 4 and len(blended) == 4 and np.all(standard["delta"] == 1)
    blended_images = set(blended["dominant"].tolist())
    assert blended_images.isdisjoint(standard["dominant"].tolist())
    assert set(blended["phantom"].tolist()) <= blended_images  # pairs within the blended half


@pytest.mark.parametrize("strategy", ["clustered", "random", "within", "random-fixed", "half"])
def test_keys_are_unique_and_stable(strategy):
    plan = make_plan(PRESENCE, strategy, seed=4)
    keys = [row_key(r, IDS) for r in plan.rows]
    assert len(set(keys)) == len(keys)
    again = [row_key(r, IDS) for r in make_plan(PRESENCE, strategy, seed=4).rows]
    assert keys == again


@pytest.mark.parametrize("kwargs, field", [
    ({"strategy": "mixup"}, "strategy"), ({"seed": -1}, "seed"), ({"strategy": "random", "pairs": 0}, "pairs"),
])
def test_bad_plan_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        make_plan(PRESENCE, **kwargs)


def test_pick_excluding_steps_over_the_excluded_member():
    members = np.array([2, 5, 9])
    assert [pick_excluding(members, 5, u) for u in (0.0, 0.49, 0.5, 0.99)] == [2, 2, 9, 9]
    assert pick_excluding(np.array([4]), 4, 0.3) == -1
    assert pick_excluding(members, 7, 0.99) == 9
