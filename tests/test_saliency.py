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


# -- datasets as they ship ---------------------------------------------------------------------------
import json
from pathlib import Path

import cv2
from PIL import Image
from click.testing import CliRunner

from blendgen.datasets.classes import VOC, ClassSet
from blendgen.datasets.files import DatasetError
from blendgen.datasets.registry import open_reader
from blendgen.datasets.saliency import SALIENCY, SaliencyReader, read_mask

PSEUDO = ClassSet(names=("background", "cat", "dog", "sofa"))


def _scene(rng: np.random.Generator, h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with one bright box and its 0/255 mask."""
    mask = np.zeros((h, w), np.uint8)
    y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    mask[y:y + h // 2, x:x + w // 2] = 255
    image = np.clip(rng.normal(60, 10, (h, w, 3)) + (mask[..., None] > 0) * 150, 0, 255).astype(np.uint8)
    return image, mask


def write_saliency_set(root: Path, images: str, masks: str, n: int, seed: int = 0, suffix: str = ".jpg") -> list[str]:
    """``n`` images and masks in ``root/images`` and ``root/masks`` (folder names as given)."""
    (root / images).mkdir(parents=True)
    (root / masks).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids = [f"sal_{seed}_{i:03d}" for i in range(n)]
    for image_id in ids:
        image, mask = _scene(rng)
        cv2.imwrite(str(root / images / f"{image_id}{suffix}"), image)
        cv2.imwrite(str(root / masks / f"{image_id}.png"), mask)
    return ids


def write_pseudo_labels(folder: Path, class_sets: dict[str, tuple[int, ...]], size=(24, 32)) -> None:
    """Hand-made pseudo labels: each id's classes as vertical stripes, and classes.json."""
    folder.mkdir(parents=True)
    for image_id, ids in class_sets.items():
        label = np.zeros(size, np.uint8)
        for k, c in enumerate(ids):
            label[:, 2 + 6 * k:6 + 6 * k] = c
        cv2.imwrite(str(folder / f"{image_id}.png"), label)
    (folder / "classes.json").write_text(json.dumps({"classes": PSEUDO.to_json()}))


@pytest.mark.parametrize("layout, images, masks", [("duts", "DUTS-TR-Image", "DUTS-TR-Mask"),
                                                   ("ecssd", "images", "ground_truth_mask"),
                                                   ("folder", "images", "masks")])
def test_saliency_sets_are_read_in_their_shipped_layouts(tmp_path, layout, images, masks):
    ids = write_saliency_set(tmp_path / "set", images, masks, 3)
    reader = open_reader("saliency", tmp_path / "set")
    assert reader.layout == layout and reader.ids() == ids and reader.classes == SALIENCY
    image, mask = reader.read_target_pair(ids[0])
    assert image.shape == (24, 32, 3) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert np.array_equal(reader.read_label(ids[0]), mask)  # without pseudo labels the mask is the label


def test_duts_train_and_test_side_by_side_are_chosen_by_split(tmp_path):
    train = write_saliency_set(tmp_path / "DUTS", "DUTS-TR-Image", "DUTS-TR-Mask", 2, seed=0)
    test = write_saliency_set(tmp_path / "DUTS", "DUTS-TE-Image", "DUTS-TE-Mask", 3, seed=1)
    assert SaliencyReader(tmp_path / "DUTS", "train").ids() == train
    assert SaliencyReader(tmp_path / "DUTS", "test").ids() == test


def test_masks_binarise_at_128_and_accept_zero_one(tmp_path):
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), grey)
    assert read_mask(tmp_path / "a.png").tolist() == [[0, 0, 1, 1]]
    cv2.imwrite(str(tmp_path / "b.png"), np.array([[0, 1, 1, 0]], np.uint8))
    assert read_mask(tmp_path / "b.png").tolist() == [[0, 1, 1, 0]]
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((2, 2), np.uint8))
    assert read_mask(tmp_path / "empty.png").sum() == 0


@pytest.mark.parametrize("pixels, message", [
    (np.array([[0, 3, 20, 7]], np.uint8), "neither a 0/255 nor a 0/1 mask"),
    (np.dstack([np.full((2, 2), 255, np.uint8), np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)]),
     "colour mask"),
    (np.full((2, 2), 1000, np.uint16), "mask of mode"),
])
def test_masks_that_are_neither_fail_in_one_line_naming_the_file(tmp_path, pixels, message):
    path = tmp_path / "bad.png"
    cv2.imwrite(str(path), pixels)
    with pytest.raises(DatasetError, match=message) as info:
        read_mask(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_layout_errors_name_the_folder(tmp_path):
    ids = write_saliency_set(tmp_path / "set", "images", "masks", 2)
    (tmp_path / "set" / "masks" / f"{ids[1]}.png").unlink()
    with pytest.raises(DatasetError, match=f"{ids[1]}.jpg: no mask"):
        SaliencyReader(tmp_path / "set")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a saliency dataset"):
        SaliencyReader(tmp_path / "empty")
    good = write_saliency_set(tmp_path / "good", "images", "masks", 2)
    write_pseudo_labels(tmp_path / "pseudo", {good[0]: (1,)})
    with pytest.raises(DatasetError, match=f"{good[1]}.png: missing pseudo label"):
        SaliencyReader(tmp_path / "good", pseudo_labels=tmp_path / "pseudo")
    (tmp_path / "pseudo" / "classes.json").unlink()
    with pytest.raises(DatasetError, match="classes.json: missing"):
        SaliencyReader(tmp_path / "good", pseudo_labels=tmp_path / "pseudo")


# -- pseudo-label class sets: clusters, shards, pairing -------------------------------------------------
import h5py

from blendgen.generation.clusters import ClusterConfig, build_clusters
from blendgen.generation.saliency import SaliencyPackConfig, saliency_mix, saliency_pack
from blendgen.generation.sources import MixConfig
from blendgen.shards.directory import ShardDir
from blendgen.shards.runner import WriteOptions

CAT, DOG, SOFA = 1, 2, 3


@pytest.fixture()
def clustered(tmp_path) -> tuple[Path, list[str]]:
    """A DUTS-layout set of 6 images with hand-made pseudo labels, clustered into out/."""
    ids = write_saliency_set(tmp_path / "DUTS-TR", "DUTS-TR-Image", "DUTS-TR-Mask", 6)
    sets = dict(zip(ids, [(CAT, DOG), (CAT, DOG), (DOG,), (SOFA,), (CAT, SOFA), ()]))
    write_pseudo_labels(tmp_path / "pseudo", sets)
    build_clusters(ClusterConfig(dataset="saliency", root=tmp_path / "DUTS-TR", out=tmp_path / "out",
                                 reader_options={"pseudo_labels": str(tmp_path / "pseudo")}), progress=False)
    return tmp_path, ids


def test_build_clusters_reads_pseudo_labels_as_the_class_sets(clustered):
    from blendgen.generation.clusters import ClusterIndex

    tmp_path, ids = clustered
    index = ClusterIndex.load(tmp_path / "out")
    assert index.classes == PSEUDO and index.source["kind"] == "saliency"
    # cat-dog in images 0 and 1, cat-sofa in image 4: Algorithm 1 over the pseudo labels.
    assert index.cooccurrence.tolist() == [[0, 2, 1], [2, 0, 0], [1, 0, 0]]
    assert index.class_counts.tolist() == [3, 3, 2]


def test_saliency_pack_stores_masks_as_labels_and_pseudo_class_sets(clustered):
    tmp_path, ids = clustered
    write_saliency_set(tmp_path / "ECSSD", "images", "ground_truth_mask", 3, seed=5)
    saliency_pack(SaliencyPackConfig(out=tmp_path / "out", split="train", write=WriteOptions(shard_size=4)), False)
    saliency_pack(SaliencyPackConfig(out=tmp_path / "out", split="val", root=tmp_path / "ECSSD"), False)
    train, val = ShardDir.open(tmp_path / "out" / "train"), ShardDir.open(tmp_path / "out" / "val")
    for shards in (train, val):
        assert shards.classes == SALIENCY and shards.manifest["task"] == "saliency"
        assert shards.manifest["pairing"]["object_ids"] == shards.manifest["object_ids"] == [CAT, DOG, SOFA]
        assert shards.manifest["pairing"]["class_names"] == list(PSEUDO.names)
        assert shards.cooccurrence.shape == (3, 3)
    assert train.num_samples == 6 and len(train.shard_paths) == 2 and val.num_samples == 3
    with h5py.File(train.shard_paths[0], "r") as f:  # plain h5py: the format is the contract
        assert [tuple(c) for c in f["dominant_classes"][:]] == [(CAT, DOG), (CAT, DOG), (DOG,), (SOFA,)]
    sample = train.readers()[0].read(0)
    mask = SaliencyReader(tmp_path / "DUTS-TR").read_mask(ids[0])
    assert np.array_equal(sample.label, mask) and set(np.unique(sample.label)) == {0, 1}
    assert val.manifest["source"]["layout"] == "ecssd" and val.readers()[0].read(0).dominant_classes == ()
    with pytest.raises(ValueError, match="give the test set's own --root"):  # not the training images again
        saliency_pack(SaliencyPackConfig(out=tmp_path / "out", split="test"), False)


def test_inspect_and_stats_name_the_pseudo_label_classes_of_saliency_shards(clustered):
    from blendgen.shards.inspect import InspectConfig, inspect
    from blendgen.shards.stats import StatsConfig, stats

    tmp_path, _ = clustered
    saliency_pack(SaliencyPackConfig(out=tmp_path / "out", split="train", dest=tmp_path / "sal-train"), False)
    rows = inspect(InspectConfig(path=tmp_path / "sal-train"))["samples"]
    assert rows[0]["dominant_classes"] == [PSEUDO.names[CAT], PSEUDO.names[DOG]]
    saliency_mix(MixConfig(out=tmp_path / "out", seed=0, dest=tmp_path / "sal-mixed"), progress=False)
    row = inspect(InspectConfig(path=tmp_path / "sal-mixed", limit=1))["samples"][0]
    assert "#" not in row["pair_names"] and row["pair_names"].split("->")[0] in PSEUDO.names
    assert stats(StatsConfig(path=tmp_path / "sal-mixed"), progress=False)["samples"] > 0


def test_saliency_mix_blends_masks_over_the_pseudo_label_clusters(clustered):
    tmp_path, _ = clustered
    result, plan = saliency_mix(MixConfig(out=tmp_path / "out", seed=0), progress=False)
    mixed = ShardDir.open(tmp_path / "out" / "mixed")
    assert mixed.classes == SALIENCY and mixed.manifest["task"] == "saliency" and mixed.num_samples == len(plan) > 0
    for sample in mixed.readers()[0]:
        assert set(np.unique(sample.label)) <= {0, 1} and set(np.unique(sample.phantom_label)) <= {0, 1}
        assert sample.pair[0] != sample.pair[1] and 0.7 <= sample.delta <= 1.0
        # the phantom comes from cluster j of the pseudo labels: its class set holds that class
        assert [CAT, DOG, SOFA][sample.pair[1]] in sample.phantom_classes


def test_sourcesep_cm_pairs_saliency_samples_by_their_pseudo_label_classes():
    from trainer.methods import mix_cooccurrence, stored_presence

    # Masks all alike ("salient" everywhere); only the stored class sets tell the samples apart.
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = {"label": torch.ones(4, 8, 8, dtype=torch.long), "classes": [(CAT,), (SOFA,), (DOG,), ()],
             "phantom": torch.full((4, 8, 8), 255), "delta": torch.ones(4)}
    cooc = torch.tensor([[0, 0, 5], [0, 0, 1], [5, 1, 0]], dtype=torch.float64)  # cat-sofa 5, dog-sofa 1
    columns = {CAT: 0, DOG: 1, SOFA: 2}
    presence = stored_presence(batch["classes"], columns, torch.device("cpu"))
    assert presence.tolist() == [[True, False, False], [False, False, True], [False, True, False], [False] * 3]
    mixed, out = mix_cooccurrence(x, batch, torch.Generator().manual_seed(0), cooc=cooc,
                                  object_ids=torch.tensor([CAT, DOG, SOFA]), alpha=0.0, gamma=3.0, rule="thres",
                                  ignore_index=255, class_columns=columns)
    assert out["label"].eq(1).all() and out["phantom"].eq(1).all()  # the targets are the two masks
    # α = 0: δ = 1 (Algorithm 2), so to see the partners blend with δ from the γ rule instead.
    mixed, out = mix_cooccurrence(x, batch, torch.Generator().manual_seed(0), cooc=cooc,
                                  object_ids=torch.tensor([CAT, DOG, SOFA]), alpha=0.0, gamma=0.0, rule="thres",
                                  ignore_index=255, class_columns=columns)
    assert out["delta"].tolist() == pytest.approx([0.9] * 4)

    def off(k: int, m: int) -> int:  # largest pixel difference from 0.9·x_k + 0.1·x_m (1 = rounding)
        return int((mixed[k].float() - (0.9 * x[k].float() + 0.1 * x[m].float())).abs().max().ceil())

    assert off(0, 1) <= 1 and off(1, 0) <= 1 and off(2, 1) <= 1  # cat <-> sofa, dog -> sofa
    assert min(off(0, 2), off(0, 3)) > 1  # not the others


# -- the made-up saliency set -------------------------------------------------------------------------
from blendgen.synth.saliency import fill_void, make_synthetic_saliency, salient_mask
from blendgen.synth.sets import SynthConfig


def test_salient_object_is_the_front_most_and_void_goes_to_the_nearest_object():
    instances = np.array([[0, 1, 1, 255, 255, 2, 2],
                          [0, 1, 1, 255, 255, 2, 2]], np.uint8)  # object 2 painted last, a void band between
    assert fill_void(instances).tolist() == [[0, 1, 1, 1, 2, 2, 2]] * 2  # each side to its own object
    assert (salient_mask(instances) == 255).tolist() == (fill_void(instances) == 2).tolist()


def test_synth_saliency_writes_duts_and_ecssd_layouts(tmp_path):
    summary = make_synthetic_saliency(SynthConfig(out=tmp_path / "sod", num_train=4, num_val=2, min_size=40,
                                                  max_size=48), progress=False)
    train, val = SaliencyReader(tmp_path / "sod" / "DUTS-TR"), SaliencyReader(tmp_path / "sod" / "ECSSD")
    assert (train.layout, len(train.ids()), val.layout, len(val.ids())) == ("duts", 4, "ecssd", 2)
    assert summary["images"] == {"train": 4, "val": 2}
    for reader in (train, val):
        for image_id in reader.ids():
            raw = cv2.imread(str(reader.mask_path(image_id)), cv2.IMREAD_UNCHANGED)
            assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}  # as DUTS ships: 0/255 grey
            assert reader.read_target_pair(image_id)[1].any()
    again = tmp_path / "again"
    make_synthetic_saliency(SynthConfig(out=again, num_train=4, num_val=2, min_size=40, max_size=48, workers=2),
                            progress=False)
    files = sorted(p.relative_to(tmp_path / "sod") for p in (tmp_path / "sod").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((tmp_path / "sod" / f).read_bytes() == (again / f).read_bytes() for f in files)  # same seed, same bytes


# -- pseudo labels ------------------------------------------------------------------------------------
def write_checkpoint(path: Path, classes: ClassSet = VOC) -> Path:
    """A real (random-weight) single-head DeepLabv3 checkpoint of ``classes``."""
    from trainer import checkpoint as ckpt_io
    from trainer.config import TrainConfig
    from trainer.model import ModelConfig, build_model

    torch.manual_seed(0)
    model_config = ModelConfig(num_classes=classes.num_classes, backbone="mobilenet_v3_large", two_branch=False)
    config = TrainConfig(shards="out", method="deeplabv3", backbone="mobilenet_v3_large")
    ckpt_io.save(path, {"config": config.to_dict(), "model_config": dict(model_config.__dict__),
                        "classes": classes.to_json(), "stage": 1, "model": build_model(model_config).state_dict()})
    return path


def test_pseudo_label_writes_class_id_pngs_and_resumes(tmp_path):
    from cli import blendgen as blendgen_cli

    ids = write_saliency_set(tmp_path / "set", "images", "masks", 3)
    checkpoint = write_checkpoint(tmp_path / "voc.pt")
    args = ["pseudo-label", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "set" / "images"),
            "--out", str(tmp_path / "pseudo"), "--device", "cpu", "--quiet"]
    first = CliRunner().invoke(blendgen_cli, args)
    assert first.exit_code == 0, first.output
    assert "3 labelled, 0 already there" in first.output
    label = np.array(Image.open(tmp_path / "pseudo" / f"{ids[0]}.png"))
    assert Image.open(tmp_path / "pseudo" / f"{ids[0]}.png").mode == "P" and label.shape == (24, 32)
    assert label.max() < VOC.num_classes
    assert json.loads((tmp_path / "pseudo" / "classes.json").read_text())["classes"]["names"] == list(VOC.names)
    (tmp_path / "pseudo" / f"{ids[1]}.png").unlink()  # a killed run: one file missing, one half-written
    (tmp_path / "pseudo" / f".{ids[1]}.tmp-999.png").write_bytes(b"half")
    again = CliRunner().invoke(blendgen_cli, args)
    assert "1 labelled, 2 already there" in again.output
    assert not list((tmp_path / "pseudo").glob(".*tmp*")) and (tmp_path / "pseudo" / f"{ids[1]}.png").is_file()
    other = CliRunner().invoke(blendgen_cli, [*args[:2], str(write_checkpoint(tmp_path / "other.pt", PSEUDO)),
                                              *args[3:]])
    assert other.exit_code == 1 and "made with another classes" in other.output and "\n" == other.output[-1]
    reader = SaliencyReader(tmp_path / "set", pseudo_labels=tmp_path / "pseudo")
    assert reader.classes == VOC and np.array_equal(reader.read_label(ids[0]), label)


# -- IJCV Table 7 end to end ---------------------------------------------------------------------------
TINY_RUN = ["--backbone", "mobilenet_v3_large", "--crop", "32", "--batch-size", "4", "--iters1", "2", "--iters2", "1",
            "--workers", "0", "--device", "cpu", "--threads", "1", "--quiet"]
TABLE7 = ("deeplabv3", "mixup", "cutmix", "sourcesep-cc", "sourcesep-cm")  # Table 7's four, and CC


def test_table7_pipeline_runs_end_to_end_on_the_made_up_set(tmp_path, monkeypatch):
    """docs/saliency.md's command log on the made-up set: synth -> pseudo-label -> build-clusters ->
    pack train / val (and mix for SourceSep-CC) -> the methods of Table 7 -> trainer report; then
    trainer eval --task saliency."""
    from cli import blendgen as blendgen_cli, trainer as trainer_cli

    monkeypatch.chdir(tmp_path)
    write_checkpoint(tmp_path / "voc.pt")

    def call(group, *args):
        result = CliRunner().invoke(group, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    call(blendgen_cli, "synth", "--task", "saliency", "--out", "sod", "--train", 12, "--val", 4, "--min-size", 40,
         "--max-size", 48, "--quiet")
    call(blendgen_cli, "pseudo-label", "--checkpoint", "voc.pt", "--images", "sod/DUTS-TR/DUTS-TR-Image",
         "--out", "pseudo/duts-tr", "--device", "cpu", "--quiet")
    call(blendgen_cli, "build-clusters", "--dataset", "saliency", "--root", "sod/DUTS-TR",
         "--option", "pseudo_labels=pseudo/duts-tr", "--out", "out-sod", "--quiet")
    call(blendgen_cli, "pack", "--task", "saliency", "--out", "out-sod", "--split", "train", "--quiet")
    call(blendgen_cli, "pack", "--task", "saliency", "--out", "out-sod", "--split", "val", "--root", "sod/ECSSD",
         "--quiet")
    # A random-weight labeller gives every image one class, so C_fb has no second cluster to draw
    # from; R_fb (random pairs) still makes SourceSep-CC's stage-1 blends of masks.
    call(blendgen_cli, "mix", "--task", "saliency", "--out", "out-sod", "--strategy", "random", "--pairs", 1, "--quiet")
    for method in TABLE7:
        out = call(trainer_cli, "run", "--shards", "out-sod", "--method", method, "--name", method, *TINY_RUN)
        assert "val max F_beta" in out
    page = call(trainer_cli, "report", *(f"runs/{m}" for m in TABLE7), "--out", "reports/table7")
    assert "saliency" in page
    text = (tmp_path / "reports/table7/report.md").read_text()
    assert "## Salient object detection (IJCV Table 7)" in text and "| Methods | ECSSD F_β ↑ | MAE ↓ |" in text
    rows = (tmp_path / "reports/table7/saliency.csv").read_text().splitlines()[1:]
    names = ["DeepLabv3-MobileNetV3", "DeepLabv3 + Mixup", "DeepLabv3 + CutMix", "DeepLabv3 + SourceSep-CC (R_fb)",
             "DeepLabv3 + SourceSep-CM"]
    assert [r.split(",")[0] for r in rows] == names
    for method, row in zip(TABLE7, rows):
        s = json.loads((tmp_path / "runs" / method / "report.json").read_text())["saliency"]
        assert row.split(",")[1:3] == [f"{s['max_fbeta']:.3f}", f"{s['mae']:.3f}"] and s["images"] == 4
        assert 0 <= s["mae"] <= 1 and 0 <= s["mean_fbeta"] <= s["max_fbeta"] <= 1
        assert (tmp_path / "runs" / method / "saliency.png").is_file()
    # trainer eval --task saliency on a checkpoint reproduces the run's own numbers (same head, same data).
    report = json.loads((tmp_path / "runs/sourcesep-cm/report.json").read_text())
    out = call(trainer_cli, "eval", "--checkpoint", "runs/sourcesep-cm/stage2.pt", "--shards", "out-sod",
               "--task", "saliency", "--head", report["head"], "--workers", "0", "--device", "cpu", "--out", "ev",
               "--quiet")
    assert "max F_beta" in out and (tmp_path / "ev" / "saliency.png").is_file()
    again = json.loads((tmp_path / "ev" / "saliency.json").read_text())["saliency"]
    assert again["max_fbeta"] == pytest.approx(report["saliency"]["max_fbeta"], abs=1e-6)
    assert again["mae"] == pytest.approx(report["saliency"]["mae"], abs=1e-6)
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["miou"] == pytest.approx(report["miou"])


def test_saliency_commands_refuse_other_data_in_one_line(tmp_path, shared_shards):
    from cli import blendgen as blendgen_cli, trainer as trainer_cli
    from conftest import TINY_CLASSES

    checkpoint = write_checkpoint(tmp_path / "tiny.pt", TINY_CLASSES)
    result = CliRunner().invoke(trainer_cli, ["eval", "--checkpoint", str(checkpoint), "--shards", str(shared_shards),
                                              "--task", "saliency", "--workers", "0", "--device", "cpu", "--quiet"])
    assert result.exit_code == 1 and "has 4 classes" in result.output and result.output.count("\n") == 1
    result = CliRunner().invoke(blendgen_cli, ["pack", "--out", str(tmp_path), "--root", str(tmp_path)])
    assert result.exit_code == 2 and "only with --task saliency" in result.output
