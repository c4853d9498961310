"""Evaluation suites: subset membership on hand-made val samples, per-subset confusion matrices,
and ``trainer eval --suite`` / ``trainer uap`` end to end on a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from blendgen.datasets.classes import ClassSet
from blendgen.shards.directory import ShardDir
from blendgen.shards.manifest import MANIFEST, manifest_dict, shard_name
from blendgen.shards.schema import Sample, ShardHeader, encode_sample
from blendgen.shards.writer import ShardWriter
from cli import trainer as trainer_cli
from trainer import checkpoint as ckpt_io
from trainer.distributed import Dist
from trainer.evaluate import Subsets, eval_loader, evaluate_pass, per_image_confusion
from trainer.metrics import ConfusionMatrix
from trainer.model import ModelConfig, build_model
from trainer.subsets import (
    ImageInfo, complex_subsets, context_subsets, person_id, person_partners, rarity_subsets, read_image_infos,
    unknown_annotations,
)
from trainer.suites import SuiteConfig, expand_suites, suite_markdown

from conftest import COLOURS

CLASSES = ClassSet(names=("background", "cat", "bottle", "person", "horse", "car", "dog"))
CAT, BOTTLE, PERSON, HORSE, CAR, DOG = 1, 2, 3, 4, 5, 6

# The training co-occurrence matrix over object ids 1..6 (row r = id r + 1), symmetric.
PAIRS = {(PERSON, HORSE): 40, (PERSON, CAR): 30, (PERSON, BOTTLE): 12, (PERSON, DOG): 12, (CAT, BOTTLE): 18,
         (HORSE, CAR): 5, (HORSE, DOG): 3, (CAR, DOG): 9, (CAR, BOTTLE): 2}
C = np.zeros((6, 6), np.int64)
for (a, b), n in PAIRS.items():
    C[a - 1, b - 1] = C[b - 1, a - 1] = n

# Hand-made val images: (key, object classes, annotated instances, per-object occluded flags).
VAL = [
    ("a", {CAT}, 1, (False,)),
    ("b", {CAT, BOTTLE}, 2, (True, False)),
    ("c", {PERSON, HORSE}, 3, (True, True, True)),
    ("d", {HORSE}, 2, (True, True)),
    ("e", {PERSON, HORSE, CAR, DOG}, 4, (False, True, False, False)),
    ("f", {PERSON, CAR, BOTTLE}, 5, (False,) * 5),
    ("g", {CAR}, -1, ()),  # no XML (a COCO-like source): unknown instances and occlusion
    ("h", set(), 0, ()),  # background only
]
INFOS = [ImageInfo(k, frozenset(c), n, occ) for k, c, n, occ in VAL]


# -- membership ------------------------------------------------------------------------------------
def test_complex_subsets_are_table_4s():
    assert complex_subsets(INFOS) == {
        "1-Occ": ["b", "c", "d", "e"], "All-Occ": ["c", "d"],
        "1-Obj": ["a"], "2-Obj": ["b", "d"], "3-Obj": ["c"], "4-Obj": ["e"],  # f has 5: in none
        "2-Cls": ["b", "c"], "3-Cls": ["f"], "4-Cls": ["e"],
    }
    assert unknown_annotations(INFOS) == {"occlusion": 2, "instances": 1}


def test_table5_partners_are_the_papers_five_on_voc_and_derived_elsewhere():
    from blendgen.datasets.classes import VOC
    from trainer.subsets import table5_partners

    voc_c = np.zeros((20, 20), np.int64)
    person = VOC.names.index("person")
    voc_c[person - 1, VOC.names.index("dog") - 1] = voc_c[VOC.names.index("dog") - 1, person - 1] = 99
    paper = [VOC.names.index(n) for n in ("horse", "motorbike", "bicycle", "bottle", "car")]
    assert table5_partners(voc_c, VOC, person, None, 5) == paper  # IJCV Table 5, whatever the counts say
    assert table5_partners(voc_c, VOC, person, ("derived",), 5) == [VOC.names.index("dog")]
    assert table5_partners(voc_c, VOC, person, ("cat", "dog"), 5) == [VOC.names.index("cat"), VOC.names.index("dog")]
    assert table5_partners(C, CLASSES, PERSON, None, 3) == [HORSE, CAR, BOTTLE]  # not VOC's classes: derived
    with pytest.raises(ValueError, match="no class named 'zebra'"):
        table5_partners(voc_c, VOC, person, ("zebra",), 5)
    with pytest.raises(ValueError, match="object classes other than 'person'"):
        table5_partners(voc_c, VOC, person, ("person",), 5)


def test_person_partners_are_the_top_cooccurring_classes_ties_by_id_zeros_left_out():
    assert person_partners(C, CLASSES, PERSON, 3) == [HORSE, CAR, BOTTLE]  # bottle and dog tie at 12
    assert person_partners(C, CLASSES, PERSON, 5) == [HORSE, CAR, BOTTLE, DOG]  # cat never met a person


def test_context_subsets_with_person_and_alone():
    assert context_subsets(INFOS, PERSON, [HORSE, CAR, BOTTLE], CLASSES.names) == {
        "horse & person": ["c", "e"], "horse alone": ["d"],
        "car & person": ["e", "f"], "car alone": ["g"],
        "bottle & person": ["f"], "bottle alone": [],
    }


def test_rarity_subsets_keep_images_whose_every_pair_is_below_t():
    # worst pair: b cat-bottle 18, c person-horse 40, e person-horse 40, f person-car 30
    assert rarity_subsets(INFOS, C, CLASSES.object_ids, (50, 40, 20, 10)) == {
        "any": ["b", "c", "e", "f"], "<50": ["b", "c", "e", "f"], "<40": ["b", "f"], "<20": ["b"], "<10": [],
    }


def test_a_dataset_without_person_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no 'person' class .* --person"):
        person_id(ClassSet(names=("background", "disc", "bar")), "person")
    with pytest.raises(ValueError, match="background class"):
        person_id(ClassSet(names=("background", "person")), "background")
    assert person_id(CLASSES, "person") == PERSON


def test_suite_names_expand_and_config_names_bad_fields():
    assert expand_suites(["all"]) == ("overall", "complex", "context", "adversarial", "blur")
    assert expand_suites(["blur", "complex", "blur"]) == ("complex", "blur")
    for bad, field in [(dict(suites=("speed",)), "suite"), (dict(thresholds=(10, 0)), "thresholds"),
                       (dict(attacks=("cw",)), "attacks"), (dict(sigmas=()), "sigmas"), (dict(eps=0), "eps"),
                       (dict(uap=("missing.npy",)), "uap"), (dict(uap_fit="crop"), "uap_fit")]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            SuiteConfig(**bad)


# -- the same samples through the real shard format ----------------------------------------------------
def paint(classes: set[int], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A label map with one vertical stripe per class (plus a void row) and its image."""
    label = np.zeros((h, w), np.uint8)
    for j, c in enumerate(sorted(classes)):
        label[4:h - 4, 2 + 6 * j:6 + 6 * j] = c
    label[0] = 255
    colours = np.vstack([COLOURS, [[200, 200, 40], [40, 200, 200], [200, 40, 200]]]).astype(np.uint8)
    return colours[np.where(label == 255, 0, label)], label


def write_val(root: Path) -> Path:
    """ROOT/val with the VAL samples (sizes vary) and the training matrix in the manifest."""
    path = root / "val"
    path.mkdir(parents=True)
    header = ShardHeader(kind="standard", classes=CLASSES, split="val", image_codec="png")
    with ShardWriter(path / shard_name(0), header) as writer:
        for n, (key, classes, instances, occluded) in enumerate(VAL):
            image, label = paint(classes, 28 + 2 * n, 32 - n)
            writer.write(encode_sample(Sample(key=key, image=image, label=label, phantom_label=None,
                                              dominant_id=key, dominant_classes=tuple(sorted(classes)),
                                              instances=instances, occluded=occluded), header))
    (path / MANIFEST).write_text(json.dumps(manifest_dict(header, [writer.info], cooccurrence=C)))
    return root


def test_infos_read_back_from_shards_give_the_same_subsets(tmp_path):
    infos = read_image_infos(ShardDir.open(write_val(tmp_path) / "val"))
    assert infos == INFOS
    assert complex_subsets(infos) == complex_subsets(INFOS)


def test_per_image_confusion_matches_one_matrix_per_image():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 5, 6), generator=g)
    target[0, 0] = 255
    pred = torch.randint(0, 4, (3, 5, 6), generator=g)
    per = per_image_confusion(target, pred, 4, 255)
    for b in range(3):
        cm = ConfusionMatrix(4)
        cm.update(target[b], pred[b])
        assert torch.equal(per[b], cm.mat)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        per_image_confusion(target, pred + 1, 4, 255)


def test_subset_matrices_equal_matrices_over_the_subsets_images(tmp_path):
    """A padded batch of 3 through evaluate_pass = each subset's images counted one by one."""
    shards = ShardDir.open(write_val(tmp_path) / "val")

    def predict(x):  # any fixed rule of the pixels: class = red channel // 64, one-hot logits
        return torch.nn.functional.one_hot((x[:, 0].long() // 64).clamp(max=6), 7).permute(0, 3, 1, 2).float()

    subsets = complex_subsets(INFOS)
    d = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    loader = eval_loader(shards, None, 3, 0, d)
    result = evaluate_pass(predict, loader, 7, 255, d, subsets=Subsets.from_lists(subsets, [i.key for i in INFOS]))
    reader = shards.readers()[0]
    alone = {}
    for i in range(len(reader)):
        s = reader.read(i)
        cm = ConfusionMatrix(7)
        x = torch.from_numpy(s.image).permute(2, 0, 1)[None]
        cm.update(torch.from_numpy(s.label.astype(np.int64)), predict(x).argmax(1)[0])
        alone[s.key] = cm.mat
    assert result.images == 8
    assert torch.equal(result.total.mat, sum(alone.values()))
    for name, keys in subsets.items():
        expected = sum((alone[k] for k in keys), torch.zeros(7, 7, dtype=torch.int64))
        assert torch.equal(result.subsets[name].mat, expected)


# -- end to end --------------------------------------------------------------------------------------
def tiny_checkpoint(path: Path) -> Path:
    """An untrained MobileNetV3 source separation network for CLASSES, as a stage-2 checkpoint."""
    torch.manual_seed(0)
    config = ModelConfig(num_classes=CLASSES.num_classes, backbone="mobilenet_v3_large")
    model = build_model(config)
    ckpt_io.save(path, {"config": {}, "model_config": dict(config.__dict__), "classes": CLASSES.to_json(),
                        "stage": 2, "model": model.state_dict()})
    return path


def test_trainer_uap_then_eval_all_suites_writes_tables_and_plots(tmp_path):
    root = write_val(tmp_path / "out")
    ckpt = tiny_checkpoint(tmp_path / "stage2.pt")
    runner = CliRunner()
    result = runner.invoke(trainer_cli, ["uap", "--checkpoint", str(ckpt), "--mode", "data-free", "--eps", "10",
                                         "--size", "16", "--iters", "2", "--device", "cpu",
                                         "--out", str(tmp_path / "free.npy")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "free.npy").shape == (16, 16, 3)
    assert np.abs(np.load(tmp_path / "free.npy")).max() <= 10

    out = tmp_path / "eval"
    result = runner.invoke(trainer_cli, [
        "eval", "--checkpoint", str(ckpt), "--shards", str(root), "--suite", "all", "--workers", "0", "--device", "cpu",
        "--batch-size", "4", "--thresholds", "50,40,20,10", "--top-k", "3", "--pgd-steps", "1", "--sigmas", "2",
        "--uap", str(tmp_path / "free.npy"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "suites.json").read_text())
    assert saved["suite_format"] == 1
    suites = saved["suites"]
    assert list(suites) == ["overall", "complex", "context", "adversarial", "blur"]
    assert {k: v["images"] for k, v in suites["complex"]["subsets"].items()} == {
        k: len(v) for k, v in complex_subsets(INFOS).items()}
    assert [p["class"] for p in suites["context"]["pairs"]] == ["horse", "car", "bottle"]
    assert [(p["threshold"], p["images"]) for p in suites["context"]["rarity"]] == [
        ("any", 4), (50, 4), (40, 2), (20, 1), (10, 0)]
    assert [r["name"] for r in suites["adversarial"]["results"]] == ["clean", "FGSM", "PGD-1", "UAP free"]
    assert suites["blur"]["sigmas"] == [0.0, 2.0] and len(suites["blur"]["objects"]) == 2
    assert suites["overall"]["miou"] == json.loads((out / "report.json").read_text())["miou"]
    plain = runner.invoke(trainer_cli, ["eval", "--checkpoint", str(ckpt), "--shards", str(root), "--workers", "0",
                                        "--device", "cpu", "--batch-size", "4", "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output  # the suites' clean pass is plain `trainer eval`, to the bit
    plain_report = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert plain_report["miou"] == suites["overall"]["miou"]
    # every evaluation reports both heads of the two-branch network: S_t (predicted here) and S_ss
    assert set(plain_report["by_head"]) == set(suites["overall"]["by_head"]) == {"t", "ss"}
    assert suites["overall"]["by_head"]["t"]["miou"] == suites["overall"]["miou"] == plain_report["by_head"]["t"]["miou"]
    assert suites["overall"]["by_head"]["ss"]["miou"] == plain_report["by_head"]["ss"]["miou"]
    assert suites["blur"]["image"][0] == suites["overall"]["miou"] == suites["adversarial"]["results"][0]["miou"]
    markdown = (out / "suites.md").read_text()
    assert "| # of images | 4 | 2 | 1 | 2 | 1 | 1 | 2 | 1 | 1 | 8 |" in markdown
    assert "horse & person" in markdown and "UAP free (R-No, L∞ 10)" in markdown  # made by data-free = no-data
    assert "## Fooling rate under each attack" in markdown
    for row in suites["adversarial"]["results"][1:]:  # the attacks' fooling rate: 1 - mIoU against the clean
        assert row["fooling_rate"] == pytest.approx(1 - row["miou_vs_clean"]) and 0 <= row["fooling_rate"] <= 1
    assert (out / "blur.png").stat().st_size > 0 and (out / "context-rarity.png").stat().st_size > 0


def test_context_suite_without_person_fails_before_evaluating(tmp_path, shared_shards):
    ckpt_classes = ClassSet(names=("background", "disc", "bar", "box"))
    config = ModelConfig(num_classes=4, backbone="mobilenet_v3_large")
    ckpt_io.save(tmp_path / "c.pt", {"config": {}, "model_config": dict(config.__dict__),
                                     "classes": ckpt_classes.to_json(), "stage": 2,
                                     "model": build_model(config).state_dict()})
    result = CliRunner().invoke(trainer_cli, ["eval", "--checkpoint", str(tmp_path / "c.pt"), "--shards",
                                              str(shared_shards), "--suite", "context", "--device", "cpu"])
    assert result.exit_code != 0 and "no 'person' class" in result.output and "--person" in result.output


def test_tables_put_runs_side_by_side():
    run = {"blur": {"sigmas": [0.0, 1.0], "image": [0.5, 0.25], "objects": [0.5, None]}}
    other = {"blur": {"sigmas": [0.0, 2.0], "image": [0.4, 0.3], "objects": [0.4, 0.35]}}
    markdown = suite_markdown([("a", run), ("b", {}), ("c", other)])
    assert "| a | whole image | 50.00 | 25.00 |" in markdown and "| a | objects only | 50.00 | n/a |" in markdown
    assert "| c | whole image | 40.00 | n/a |" in markdown  # values matched by σ, not by position
    assert "| b |" not in markdown  # a run without the suite gets no row


def test_data_driven_uap_from_training_shards(tmp_path):
    from trainer.attacks import UapConfig, generate_uap

    root = write_val(tmp_path / "out")
    config = UapConfig(checkpoint=str(tiny_checkpoint(tmp_path / "stage2.pt")), shards=str(root), split="val",
                       mode="data", eps=6, size=16, iters=3, batch_size=4, workers=0, device="cpu",
                       out=str(tmp_path / "data.npy"))
    path, meta = generate_uap(config)
    delta = np.load(path)
    assert delta.shape == (16, 16, 3) and np.abs(delta).max() <= 6 and meta["images"] == 8
    assert json.loads(path.with_suffix(".json").read_text())["mode"] == "data"


def fake_run_with_suites(root: Path, name: str, method: str, miou: float) -> Path:
    """A finished run (config.json, report.json) with ``trainer eval --suite`` output one level down."""
    from trainer.config import TrainConfig

    d = root / name
    (d / "eval-stage2-val").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(TrainConfig(shards="/data/out", name=name, method=method).to_dict()))
    (d / "report.json").write_text(json.dumps({"split": "val", "stage": 2, "head": "t", "eval_crop": None, "miou": miou,
                                               "pixel_acc": 0.9, "mean_acc": 0.5, "per_class_iou": {"bg": miou}}))
    subsets = {n: {"images": 3, "miou": miou} for n in ("1-Occ", "All-Occ", "1-Obj", "2-Obj", "3-Obj", "4-Obj",
                                                         "2-Cls", "3-Cls", "4-Cls")}
    suites = {"complex": {"subsets": subsets, "all": {"images": 9, "miou": miou},
                          "unknown": {"occlusion": 0, "instances": 0}},
              "adversarial": {"results": [{"name": "clean", "miou": miou},
                                          {"name": "FGSM", "eps": 8, "miou": miou / 2}]}}
    (d / "eval-stage2-val" / "suites.json").write_text(json.dumps({"suite_format": 1, "suites": suites}))
    # a later evaluation of one more suite, in its own directory: merged; a repeated suite: the first wins
    later = {"complex": {}, "blur": {"sigmas": [0.0, 4.0], "image": [miou, miou / 4], "objects": [miou, miou / 2]}}
    (d / "eval-stage2-val-later").mkdir()
    (d / "eval-stage2-val-later" / "suites.json").write_text(json.dumps({"suite_format": 1, "suites": later}))
    return d


def test_trainer_report_puts_suite_tables_of_runs_side_by_side(tmp_path):
    from trainer.report import ReportConfig, make_report

    runs = [fake_run_with_suites(tmp_path, "base", "deeplabv3", 0.4),
            fake_run_with_suites(tmp_path, "cm", "sourcesep-cm", 0.5)]
    result = make_report(ReportConfig(runs=tuple(map(str, runs)), out=str(tmp_path / "rep")))
    assert {"suite_complex", "suite_adversarial", "suite_blur"} <= set(result["tables"])
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "| # of images | 3 | 3 | 3 | 3 | 3 | 3 | 3 | 3 | 3 | 9 |" in page
    assert "| DeepLabv3 | 40.00 | 20.00 |" in page and "| DeepLabv3 + SourceSep-CM | 50.00 | 25.00 |" in page
    assert (tmp_path / "rep" / "suite_adversarial.csv").read_text().startswith("run,clean,FGSM ε=8")
    assert "(suites: S_t)" not in page  # the report's head is the suites' head (no by_head: S_t)
    assert "| DeepLabv3 + SourceSep-CM | objects only | 50.00 | 25.00 |" in page


def test_fooling_rate_is_one_minus_the_miou_against_the_clean_prediction():
    """A hand-computed case: 4 pixels, one ignored; the perturbation moves pixel 1 from class 1 to 2."""
    from trainer.suites import fooling

    def predict(x):  # class = red // 64, one-hot logits over 7 classes
        return torch.nn.functional.one_hot((x[:, 0].long() // 64).clamp(max=6), 7).permute(0, 3, 1, 2).float()

    image = torch.zeros(1, 3, 1, 4, dtype=torch.uint8)
    image[0, 0, 0] = torch.tensor([10, 70, 130, 200], dtype=torch.uint8)  # clean prediction 0, 1, 2, 3
    batch = {"image": image, "label": torch.tensor([[[0, 1, 2, 255]]]), "key": ["x"]}

    def perturb(x, y):
        x = x.float()
        x[0, 0, 0, 1] += 64  # -> class 2
        return x

    d = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    result = fooling(evaluate_pass(predict, [batch], 7, 255, d, perturb=perturb, against_clean=True))
    # labelled pixels: clean 0, 1, 2 -> attacked 0, 2, 2: IoU 1, 0, 1/2 (the ignored pixel, 3 -> 3, left out)
    assert result["miou_vs_clean"] == pytest.approx(0.5) and result["fooling_rate"] == pytest.approx(0.5)
    assert result["miou"] == pytest.approx(0.5)  # against the labels 0, 1, 2 as well
    assert evaluate_pass(predict, [batch], 7, 255, d, perturb=perturb).agreement is None  # only when asked


def test_gd_uap_modes_differ_in_the_images_they_use(tmp_path):
    from trainer.attacks import GDUAP_MODES, UapConfig, generate_uap, least_background

    root = write_val(tmp_path / "out")
    shards = ShardDir.open(root / "val")
    reader = shards.readers()[0]
    picked = [reader.read(i).key for _, i in least_background(shards, 0.25)]
    assert picked == ["e", "f"]  # four and three object stripes: the least background of the eight
    ckpt = str(tiny_checkpoint(tmp_path / "stage2.pt"))
    images = {}
    for mode in GDUAP_MODES:
        config = UapConfig(checkpoint=ckpt, shards=str(root), split="val", mode=mode, eps=8, size=16, iters=3,
                           part=0.25, batch_size=2, device="cpu", out=str(tmp_path / f"{mode}.npy"),
                           val_images=2 if mode == "all-data" else 0, val_split="val")
        path, meta = generate_uap(config)
        assert np.abs(np.load(path)).max() <= 8 and meta["optimizer"] == "adam" and meta["steps"] == 3
        images[mode] = meta.get("images")
    assert images == {"no-data": None, "range-prior": None, "partial-data": 2, "all-data": 8}
    made = json.loads((tmp_path / "all-data.json").read_text())
    assert made["val_images"] == 2 and [step for step, _ in made["validations"]] == [3]  # the end of a short run


def test_suite_rows_name_the_head_when_the_report_shows_another():
    from types import SimpleNamespace

    from trainer.suites import _suite_label

    record = SimpleNamespace(head="ss", report={"head": "ss"},
                             evals={"eval-stage2-val/suites.json": {"suite_format": 1, "head": "t", "suites": {}}})
    assert _suite_label("DeepLabv3 + SourceSep-CM", record) == "DeepLabv3 + SourceSep-CM (suites: S_t)"
    record.head = "t"
    assert _suite_label("DeepLabv3 + SourceSep-CM", record) == "DeepLabv3 + SourceSep-CM"
