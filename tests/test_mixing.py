import math

import numpy as np
import pytest
import torch

from blendgen.datasets.classes import VOC
from trainer.losses import mixup_loss
from trainer.mixing import (
    class_presence,
    cooccurrence_mix,
    cooccurrence_pairing,
    cutmix,
    cutmix_box,
    mixup,
    sample_beta,
)

IGNORE = 255
VOC_IDS = VOC.object_ids  # label ids 1..20, matrix row r = id r + 1
PERSON, CAR, DOG, BUS, HORSE = 15, 7, 12, 6, 13


def algorithm2(images, labels, cooc, object_ids, alpha, gamma, generator, ignore_index=IGNORE):
    """IJCV Algorithm 2, transcribed line by line with loops over k and m; our documented
    rules (trainer/mixing.py docstring) are marked (ours). Returns numpy arrays."""
    images = images.cpu().numpy().astype(np.float32)
    labels = labels.cpu().numpy()
    cooc = np.asarray(cooc)
    row_of = {int(c): r for r, c in enumerate(object_ids)}  # label id -> matrix row
    n = len(images)
    # steps 1-5
    if alpha > 0:
        delta = float(sample_beta(alpha, generator))
    else:
        delta = 1.0
    delta = max(delta, 1.0 - delta)  # (ours) more weight on the dominant
    keys = torch.rand((n, n), generator=generator, device=generator.device).cpu().numpy()  # (ours) ties

    mixed, y1, y2, deltas, partners, counts = [], [], [], [], [], []
    for k in range(n):  # step 7
        similarity_score = np.zeros(n)
        mixed_category_list = np.zeros(n, dtype=np.int64)
        for m in range(n):  # step 10
            if k != m:
                # steps 12-14: unique categories without background and ignore
                k_unique = [c for c in np.unique(labels[k]) if c != ignore_index and c in row_of]
                m_unique = [c for c in np.unique(labels[m]) if c != ignore_index and c in row_of]
                if len(k_unique) >= 1 and len(m_unique) >= 1:
                    cooccurrence_score = 0.0  # step 16
                    for i in range(len(m_unique)):  # steps 17-21
                        for j in range(len(k_unique)):  # (ours) step 19's second index read as [j]
                            cooccurrence_score += cooc[row_of[m_unique[i]], row_of[k_unique[j]]]
                    similarity_score[m] = cooccurrence_score  # step 22
                # step 23, (ours) for every m, so a fallback pair is counted too
                mixed_category_list[m] = len(m_unique) + len(k_unique)
        # steps 27-28 (ours): argmax over m != k; among equal maxima the largest key wins
        others = [m for m in range(n) if m != k]
        if others:
            best = max(similarity_score[m] for m in others)
            top_sim_idx = max((m for m in others if similarity_score[m] == best), key=lambda m: keys[k, m])
        else:  # (ours) a batch of one pairs with itself
            top_sim_idx = k
            k_unique = [c for c in np.unique(labels[k]) if c != ignore_index and c in row_of]
            mixed_category_list[k] = 2 * len(k_unique)
        delta_k = np.float32(delta)  # (ours) steps 29-31 change δ for this pair only
        if mixed_category_list[top_sim_idx] > gamma:
            delta_k = np.float32(0.9)
        mixed.append(delta_k * images[k] + (np.float32(1) - delta_k) * images[top_sim_idx])  # step 32
        y1.append(labels[k])  # step 33
        y2.append(labels[top_sim_idx])
        deltas.append(delta_k)
        partners.append(top_sim_idx)
        counts.append(mixed_category_list[top_sim_idx])
    return {"mixed": np.stack(mixed), "y1": np.stack(y1), "y2": np.stack(y2), "delta": np.array(deltas),
            "partner": np.array(partners), "count": np.array(counts)}


def label_of(ids, size=8, ignore_border=True):
    """A (size, size) label map holding exactly ``ids`` (plus background 0 and an ignore border)."""
    lab = np.zeros((size, size), dtype=np.int64)
    flat = lab[1:-1, 1:-1].reshape(-1) if ignore_border else lab.reshape(-1)
    for n, c in enumerate(ids):
        flat[n::len(ids) + 1] = c  # every (len+1)-th pixel, the rest stays background
    if ignore_border:
        lab[1:-1, 1:-1] = flat.reshape(size - 2, size - 2)
        lab[0, :] = lab[-1, :] = lab[:, 0] = lab[:, -1] = IGNORE
    return lab


def batch_of(class_sets, size=8):
    """Labels (B, H, W) from class sets; None = an all-ignore map. Images are random floats."""
    labels = [np.full((size, size), IGNORE) if ids is None else label_of(ids, size) for ids in class_sets]
    label = torch.as_tensor(np.stack(labels), dtype=torch.long)
    image = torch.rand((len(labels), 3, size, size), generator=torch.Generator().manual_seed(99))
    return image, label


def voc_cooc(pairs):
    """A symmetric (20, 20) matrix with C[a, b] = C[b, a] = count for (id_a, id_b, count)."""
    c = np.zeros((20, 20), dtype=np.int64)
    for a, b, count in pairs:
        c[a - 1, b - 1] = c[b - 1, a - 1] = count
    return c


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mix_and_literal(image, label, cooc, alpha, gamma, seed, object_ids=VOC_IDS):
    got = cooccurrence_mix(image, label, torch.as_tensor(cooc), object_ids, alpha, gamma, gen(seed))
    want = algorithm2(image, label, cooc, object_ids, alpha, gamma, gen(seed))
    return got, want


def assert_matches_literal(got, want):
    mixed, dominant, phantom, delta = got
    np.testing.assert_array_equal(mixed.numpy(), want["mixed"])
    np.testing.assert_array_equal(dominant.numpy(), want["y1"])
    np.testing.assert_array_equal(phantom.numpy(), want["y2"])
    np.testing.assert_array_equal(delta.numpy(), want["delta"])


# -- class_presence ---------------------------------------------------------------------------


@pytest.mark.parametrize("object_ids", [VOC_IDS, [3, 7, 200]])
def test_class_presence_matches_numpy_unique(object_ids):
    rng = np.random.default_rng(0)
    values = np.array([0, 1, 3, 7, 15, 20, 200, IGNORE])
    label = rng.choice(values, size=(6, 9, 11))
    label[2] = 0  # background only
    label[3] = IGNORE  # all ignore
    got = class_presence(torch.as_tensor(label), object_ids)
    want = np.zeros((6, len(object_ids)), dtype=bool)
    for b in range(6):
        present = set(np.unique(label[b]).tolist()) - {IGNORE}
        want[b] = [c in present for c in object_ids]
    assert got.dtype == torch.bool and got.shape == (6, len(object_ids))
    np.testing.assert_array_equal(got.numpy(), want)
    assert not got[2].any() and not got[3].any()


def test_class_presence_never_counts_ignore_or_background():
    _, label = batch_of([[PERSON], [], None])
    got = class_presence(label, VOC_IDS)
    assert got[0].nonzero().flatten().tolist() == [PERSON - 1]
    assert not got[1:].any()
    with pytest.raises(ValueError, match="object_ids"):
        class_presence(label, [1, 1, 2])
    with pytest.raises(ValueError, match="object_ids"):
        class_presence(label, [PERSON, IGNORE])
    unchecked = class_presence(label, torch.tensor([PERSON, IGNORE]))  # a tensor is not checked
    assert unchecked.tolist() == [[True, False], [False, False], [False, False]]


@pytest.mark.parametrize("bad", [256, -1])
def test_class_presence_rejects_values_outside_uint8(bad):
    _, label = batch_of([[PERSON], [CAR]])
    label[1, 3, 3] = bad
    with pytest.raises(RuntimeError, match="out of bounds"):
        class_presence(label, VOC_IDS)


# -- pairing ----------------------------------------------------------------------------------


def test_pairing_picks_the_unique_maximum_hand_worked():
    # scores: {person}: car 5, dog 3, {bus, horse} 1; {car}: person 5, {bus, horse} 2;
    # {dog}: person 3; {bus, horse}: car 2, person 1
    cooc = voc_cooc([(PERSON, CAR, 5), (PERSON, DOG, 3), (CAR, BUS, 2), (HORSE, PERSON, 1)])
    _, label = batch_of([[PERSON], [CAR], [DOG], [BUS, HORSE]])
    presence = class_presence(label, VOC_IDS)
    for seed in range(5):
        partner, count = cooccurrence_pairing(presence, torch.as_tensor(cooc), gen(seed))
        assert partner.tolist() == [1, 0, 0, 1]
        assert count.tolist() == [2, 2, 2, 3]


TIE_BATCH = [[PERSON], [PERSON, CAR], [CAR], [], None, [PERSON]]
# with C[person, car] = 5 only: every candidate of a row below scores 5, the others 0
TIE_EXPECTED = [{1, 2}, {0, 2, 5}, {0, 1, 5}, {0, 1, 2, 4, 5}, {0, 1, 2, 3, 5}, {1, 2}]


def test_pairing_breaks_ties_at_random_and_falls_back_without_object_classes():
    cooc = voc_cooc([(PERSON, CAR, 5)])
    image, label = batch_of(TIE_BATCH)
    presence = class_presence(label, VOC_IDS)
    seen = [set() for _ in TIE_BATCH]
    for seed in range(200):
        partner, count = cooccurrence_pairing(presence, torch.as_tensor(cooc), gen(seed))
        want = algorithm2(image, label, cooc, VOC_IDS, 0.0, math.inf, gen(seed))
        np.testing.assert_array_equal(partner.numpy(), want["partner"])
        np.testing.assert_array_equal(count.numpy(), want["count"])
        for k, m in enumerate(partner.tolist()):
            seen[k].add(m)
    assert seen == TIE_EXPECTED  # every tied maximum gets picked, nothing else, never k itself


def test_pairing_counts_categories_of_fallback_pairs():
    _, label = batch_of([[PERSON, CAR, DOG], []])
    partner, count = cooccurrence_pairing(class_presence(label, VOC_IDS), torch.zeros(20, 20), gen(0))
    assert partner.tolist() == [1, 0] and count.tolist() == [3, 3]


@pytest.mark.parametrize("class_sets", [[[PERSON, CAR]], [[]], [None]])
def test_batch_of_one_pairs_with_itself_and_is_unchanged(class_sets):
    image, label = batch_of(class_sets)
    cooc = voc_cooc([(PERSON, CAR, 5)])
    got, want = mix_and_literal(image, label, cooc, 1.0, 3, seed=0)
    assert_matches_literal(got, want)
    assert torch.allclose(got[0], image, rtol=0, atol=1e-6)  # δ·I + (1-δ)·I
    assert torch.equal(got[2], label)


@pytest.mark.parametrize("class_sets", [[[PERSON], [CAR]], [[], None], [[PERSON], []]])
def test_batch_of_two_pairs_the_two(class_sets):
    image, label = batch_of(class_sets)
    for seed in range(5):
        got, want = mix_and_literal(image, label, voc_cooc([(PERSON, CAR, 5)]), 0.5, 3, seed)
        assert_matches_literal(got, want)
        assert torch.equal(got[2], label.flip(0))


def test_pairing_reads_step19_index_order_on_an_asymmetric_matrix():
    # score[k, m] sums C[class of m, class of k]: only C[car, person] is set, so {person}
    # prefers {car} and {car} has no preference (ties at 0, random among both others)
    c = np.zeros((20, 20))
    c[CAR - 1, PERSON - 1] = 1.0
    _, label = batch_of([[PERSON], [DOG], [CAR]])
    partner, _ = cooccurrence_pairing(class_presence(label, VOC_IDS), torch.as_tensor(c), gen(0))
    assert partner[0] == 2


def test_pairing_rejects_a_matrix_of_the_wrong_size():
    _, label = batch_of([[PERSON], [CAR]])
    with pytest.raises(ValueError, match="cooc"):
        cooccurrence_pairing(class_presence(label, VOC_IDS), torch.zeros(19, 19), gen(0))


# -- γ threshold and δ --------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.4])
@pytest.mark.parametrize("gamma", [1, 2, 3, 4, math.inf])
def test_gamma_sets_delta_to_0_9_exactly_when_the_pair_has_more_classes(alpha, gamma):
    cooc = voc_cooc([(PERSON, CAR, 5), (PERSON, DOG, 3), (CAR, BUS, 2), (HORSE, PERSON, 1)])
    image, label = batch_of([[PERSON], [CAR], [DOG, BUS, HORSE], [BUS, HORSE], [], [PERSON, CAR, DOG, BUS]])
    for seed in range(10):
        got, want = mix_and_literal(image, label, cooc, alpha, gamma, seed)
        assert_matches_literal(got, want)
        g = gen(seed)  # replay the draws: δ (if α > 0), then the pairing's keys
        base = float(sample_beta(alpha, g)) if alpha > 0 else 1.0
        base = np.float32(max(base, 1 - base))
        _, count = cooccurrence_pairing(class_presence(label, VOC_IDS), torch.as_tensor(cooc), g)
        expected = np.where(count.numpy() > gamma, np.float32(0.9), base)
        np.testing.assert_array_equal(got[3].numpy(), expected)


@pytest.mark.parametrize("alpha", [0.1, 0.4, 1.0, 5.0])
def test_delta_goes_to_the_dominant(alpha):
    image, label = batch_of([[PERSON], [CAR], [DOG]])
    cooc = torch.as_tensor(voc_cooc([(PERSON, CAR, 5)]))
    deltas = torch.cat([cooccurrence_mix(image, label, cooc, VOC_IDS, alpha, math.inf, gen(s))[3]
                        for s in range(100)])
    assert deltas.dtype == torch.float32
    assert (deltas >= 0.5).all() and (deltas <= 1).all()
    assert len(deltas.unique()) > 50  # one fresh δ per batch, shared by the batch
    one = cooccurrence_mix(image, label, cooc, VOC_IDS, alpha, math.inf, gen(0))[3]
    assert (one == one[0]).all()


def test_alpha_zero_keeps_images_unless_gamma_applies():
    image, label = batch_of([[PERSON], [CAR], [DOG, BUS, HORSE]])
    cooc = torch.as_tensor(voc_cooc([(PERSON, CAR, 5)]))  # 0 and 1 pair, 2 falls back
    mixed, _, phantom, delta = cooccurrence_mix(image, label, cooc, VOC_IDS, 0.0, 3, gen(0))
    assert delta.tolist()[:2] == [1.0, 1.0]
    assert torch.equal(mixed[:2], image[:2])
    assert delta[2] == torch.tensor(0.9)  # 3 classes + its partner's 1 > γ = 3


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_delta_min_floors_delta_with_the_same_draws(alpha):
    image, label = batch_of([[PERSON], [CAR], [DOG], [BUS, HORSE]])
    cooc = torch.as_tensor(voc_cooc([(PERSON, CAR, 5), (DOG, HORSE, 2)]))
    floor = 0.7
    for seed in range(300):
        papers = cooccurrence_mix(image, label, cooc, VOC_IDS, alpha, math.inf, gen(seed))
        floored = cooccurrence_mix(image, label, cooc, VOC_IDS, alpha, math.inf, gen(seed), delta_min=floor)
        g = gen(seed)  # replay today's draw: one Beta(α, α), folded to the dominant
        beta = float(sample_beta(alpha, g))
        folded = max(beta, 1 - beta)
        # None is today's δ bit for bit, and 0.5 maps [0.5, 1] onto itself exactly
        assert (papers[3] == np.float32(folded)).all()
        np.testing.assert_array_equal(
            cooccurrence_mix(image, label, cooc, VOC_IDS, alpha, math.inf, gen(seed), delta_min=0.5)[3], papers[3])
        np.testing.assert_array_equal(floored[3].numpy(), np.float32(floor + (1 - floor) * (2 * folded - 1)))
        assert torch.equal(floored[2], papers[2])  # the draw order is unchanged: same partners
    deltas = torch.cat([cooccurrence_mix(image, label, cooc, VOC_IDS, alpha, math.inf, gen(s), delta_min=floor)[3]
                        for s in range(300)])
    assert deltas.min() >= torch.tensor(floor, dtype=torch.float32) and deltas.max() <= 1
    assert deltas.min() < floor + 0.02  # the floor is reached, not just respected


def test_delta_min_keeps_gamma_thres_and_refuses_a_floor_below_one_half():
    image, label = batch_of([[PERSON], [CAR], [DOG, BUS, HORSE]])
    cooc = torch.as_tensor(voc_cooc([(PERSON, CAR, 5)]))
    delta = cooccurrence_mix(image, label, cooc, VOC_IDS, 1.0, 3, gen(0), delta_min=0.95)[3]
    assert delta[2] == torch.tensor(0.9) and (delta[:2] >= torch.tensor(0.95)).all()  # γ-thres as is
    for bad in (0.4, 1.5):
        with pytest.raises(ValueError, match="^delta_min:"):
            cooccurrence_mix(image, label, cooc, VOC_IDS, 1.0, 3, gen(0), delta_min=bad)


# -- blending over random batches vs the literal algorithm ------------------------------------


def random_batch(seed, b, size=12, pool=(PERSON, CAR, DOG, BUS, HORSE, 1, 20)):
    rng = np.random.default_rng(seed)
    class_sets = []
    for _ in range(b):
        kind = rng.random()
        if kind < 0.1:
            class_sets.append(None)
        elif kind < 0.2:
            class_sets.append([])
        else:
            class_sets.append(sorted(rng.choice(pool, size=rng.integers(1, 5), replace=False).tolist()))
    image, label = batch_of(class_sets, size)
    image = torch.as_tensor(rng.random((b, 3, size, size)), dtype=torch.float32)
    presence = class_presence(label, VOC_IDS).numpy().astype(np.int64)
    cooc = presence.T @ presence  # IJCV Algorithm 1 on the batch itself: integer counts, many ties
    np.fill_diagonal(cooc, 0)
    return image, label, cooc


@pytest.mark.parametrize("seed", range(12))
def test_cooccurrence_mix_matches_literal_algorithm2_on_random_batches(seed):
    b = [3, 8, 16][seed % 3]
    image, label, cooc = random_batch(seed, b)
    alpha, gamma = [(1.0, 3), (0.2, 2), (0.0, 4), (4.0, math.inf)][seed % 4]
    got, want = mix_and_literal(image, label, cooc, alpha, gamma, seed)
    assert_matches_literal(got, want)


@pytest.mark.parametrize("seed", range(4))
def test_unique_maxima_need_no_randomness(seed):
    # continuous, asymmetric scores: maxima are unique, so the partner ignores the generator
    image, label, _ = random_batch(seed, 10, pool=tuple(range(1, 21)))
    cooc = np.random.default_rng(seed).random((20, 20))
    presence = class_presence(label, VOC_IDS)
    has_class = presence.any(dim=1)
    partners = [cooccurrence_pairing(presence, torch.as_tensor(cooc), gen(s))[0] for s in range(3)]
    want = algorithm2(image, label, cooc, VOC_IDS, 0.0, math.inf, gen(0))["partner"]
    for p in partners:
        np.testing.assert_array_equal(p[has_class].numpy(), want[has_class.numpy()])


def test_blend_is_eq1_per_sample():
    image, label, cooc = random_batch(3, 8)
    mixed, _, phantom, delta = cooccurrence_mix(image, label, torch.as_tensor(cooc), VOC_IDS, 1.0, 3, gen(7))
    partner, _ = cooccurrence_pairing(class_presence(label, VOC_IDS), torch.as_tensor(cooc),
                                      _after_beta(1.0, gen(7)))
    d = delta.view(-1, 1, 1, 1)
    assert torch.equal(mixed, d * image + (1 - d) * image[partner])
    manual = (delta.double().view(-1, 1, 1, 1) * image.double()
              + (1 - delta.double().view(-1, 1, 1, 1)) * image[partner].double())
    assert torch.allclose(mixed.double(), manual, rtol=0, atol=1e-6)
    assert torch.equal(phantom, label[partner])


def _after_beta(alpha, g):
    sample_beta(alpha, g)
    return g


def test_uint8_images_blend_as_float():
    image, label, cooc = random_batch(1, 4)
    image8 = (image * 255).to(torch.uint8)
    mixed, *_ = cooccurrence_mix(image8, label, torch.as_tensor(cooc), VOC_IDS, 1.0, 3, gen(0))
    ref, *_ = cooccurrence_mix(image8.float(), label, torch.as_tensor(cooc), VOC_IDS, 1.0, 3, gen(0))
    assert mixed.dtype == torch.float32 and torch.equal(mixed, ref)


def test_mismatched_batch_raises():
    image, label = batch_of([[PERSON], [CAR]])
    cooc = torch.zeros(20, 20)
    with pytest.raises(ValueError):
        cooccurrence_mix(image, label[:1], cooc, VOC_IDS, 1.0, 3, gen(0))
    with pytest.raises(ValueError):
        cooccurrence_mix(image, label[:, :4], cooc, VOC_IDS, 1.0, 3, gen(0))
    with pytest.raises(ValueError, match="alpha"):
        mixup(image, label, -1.0, gen(0))


# -- Mixup ------------------------------------------------------------------------------------


def test_mixup_blends_with_a_permutation_and_one_lambda():
    image, label, _ = random_batch(5, 8)
    mixed, label_a, label_b, lam = mixup(image, label, 0.4, gen(3))
    g = gen(3)
    want_lam = sample_beta(0.4, g).float()
    perm = torch.randperm(8, generator=g)
    assert torch.equal(lam, want_lam.repeat(8))
    assert torch.equal(label_a, label) and torch.equal(label_b, label[perm])
    assert torch.equal(mixed, want_lam * image + (1 - want_lam) * image[perm])
    assert sorted(perm.tolist()) == list(range(8))


def test_mixup_with_alpha_zero_does_not_mix():
    image, label, _ = random_batch(5, 4)
    mixed, _, _, lam = mixup(image, label, 0.0, gen(0))
    assert torch.equal(mixed, image) and (lam == 1).all()


def test_mixup_loss_is_the_lambda_weighted_per_image_ce():
    rng = np.random.default_rng(0)
    logits = torch.as_tensor(rng.normal(size=(3, 5, 4, 6)), dtype=torch.float32)
    label_a = torch.as_tensor(rng.integers(0, 5, size=(3, 4, 6)))
    label_b = torch.as_tensor(rng.integers(0, 5, size=(3, 4, 6)))
    label_a[0, :2] = IGNORE
    label_b[1] = IGNORE  # all ignore: that term is 0
    lam = torch.tensor([0.7, 0.2, 1.0])
    log_p = torch.log_softmax(logits.double(), dim=1).numpy()

    def ce(b, target):  # mean -log p over the labelled pixels of image b, by hand
        terms = [-log_p[b, target[b, y, x], y, x]
                 for y in range(4) for x in range(6) if target[b, y, x] != IGNORE]
        return float(np.mean(terms)) if terms else 0.0

    ya, yb = label_a.numpy(), label_b.numpy()
    want = np.mean([lam[b].item() * ce(b, ya) + (1 - lam[b].item()) * ce(b, yb) for b in range(3)])
    got, _ = mixup_loss({"t": logits}, label_a, label_b, lam)
    assert abs(got.item() - want) < 1e-5


# -- CutMix -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_pastes_the_partners_box_in_image_and_label(seed):
    image, label, _ = random_batch(seed, 6, size=16)
    mixed, mixed_label, box, lam, partner = cutmix(image, label, 1.0, gen(seed))
    x1, y1, x2, y2 = box.tolist()
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[y1:y2, x1:x2] = True
    assert torch.equal(mixed_label[:, inside], label[partner][:, inside])
    assert torch.equal(mixed_label[:, ~inside], label[:, ~inside])
    assert torch.equal(mixed[:, :, inside], image[partner][:, :, inside])
    assert torch.equal(mixed[:, :, ~inside], image[:, :, ~inside])
    assert mixed.dtype == image.dtype
    assert torch.equal(lam, torch.full((6,), 1 - (x2 - x1) * (y2 - y1) / 256.0))
    assert sorted(partner.tolist()) == list(range(6))


def test_cutmix_box_area_ratio_is_one_minus_lambda():
    lam = torch.tensor(0.64, dtype=torch.float64)  # √(1-λ) = 0.6: a 60 × 30 box in 100 × 50
    full = 0
    for seed in range(300):
        x1, y1, x2, y2 = cutmix_box(lam, 50, 100, gen(seed)).tolist()
        assert 0 <= x1 <= x2 <= 100 and 0 <= y1 <= y2 <= 50
        assert x2 - x1 <= 60 and y2 - y1 <= 30
        if x2 - x1 == 60 and y2 - y1 == 30:  # not clipped by the border
            full += 1
            assert (x2 - x1) * (y2 - y1) / (100 * 50) == pytest.approx(1 - 0.64)
    assert 20 < full < 100  # P(unclipped) = 41/100 · 21/50 ≈ 0.17 with a uniform centre
    for value in [0.1, 0.5, 0.9]:  # any λ: the unclipped area is (1-λ)·H·W up to rounding
        w, h = math.floor(321 * math.sqrt(1 - value)), math.floor(321 * math.sqrt(1 - value))
        assert abs(w * h / 321**2 - (1 - value)) < 2 / 321


def test_cutmix_with_alpha_zero_changes_nothing():
    image, label, _ = random_batch(0, 4)
    mixed, mixed_label, box, lam, _ = cutmix(image, label, 0.0, gen(0))
    assert torch.equal(mixed, image) and torch.equal(mixed_label, label) and (lam == 1).all()


# -- reproducibility and devices --------------------------------------------------------------


def test_same_seed_same_batch_for_every_op():
    image, label, cooc = random_batch(2, 8)
    cooc = torch.as_tensor(cooc)
    ops = [
        lambda g: cooccurrence_mix(image, label, cooc, VOC_IDS, 1.0, 3, g),
        lambda g: mixup(image, label, 1.0, g),
        lambda g: cutmix(image, label, 1.0, g),
    ]
    for op in ops:
        first, again, other = op(gen(11)), op(gen(11)), op(gen(12))
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cooccurrence_mix_on_cuda_matches_literal_without_host_sync():
    image, label, cooc = random_batch(4, 16, size=32)
    device = torch.device("cuda")
    ids = torch.as_tensor(VOC_IDS, device=device)
    cooc_d = torch.as_tensor(cooc, device=device)
    image_d, label_d = image.to(device), label.to(device)
    g = torch.Generator(device=device).manual_seed(5)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = cooccurrence_mix(image_d, label_d, cooc_d, ids, 1.0, 3, g)
        mixup(image_d, label_d, 1.0, g)
        cutmix(image_d, label_d, 1.0, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = algorithm2(image, label, cooc, VOC_IDS, 1.0, 3, torch.Generator(device=device).manual_seed(5))
    np.testing.assert_array_equal(got[2].cpu().numpy(), want["y2"])
    np.testing.assert_array_equal(got[3].cpu().numpy(), want["delta"])
    np.testing.assert_allclose(got[0].cpu().numpy(), want["mixed"], rtol=0, atol=1e-6)  # FMA on GPU
