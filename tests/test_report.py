"""trainer report: the papers' tables from run directories (fake ones written here, and a real tiny run)."""

from __future__ import annotations

import csv
import json
import math
import shlex

import pytest
from click.testing import CliRunner

import trainer.report as report_module
from cli import trainer as trainer_cli
from trainer.config import TrainConfig
from trainer.report import ReportConfig, Table, load_run, make_report, run_command, table_builder
from trainer.train import run

CLASSES = ["background", "disc", "bar", "box"]
DATASET = {"source": {"kind": "voc", "root": "/data/demo", "split": "val"}, "ids_sha256": "abc", "samples": 8}


def fake_run(root, name, miou, stage=2, dataset=DATASET, classes=CLASSES, eval_crop=None, by_head=None, **config):
    """A finished run directory as trainer run leaves it (config.json, report.json)."""
    d = root / name
    d.mkdir(parents=True)
    c = TrainConfig(shards="/data/out", name=name, **config)
    (d / "config.json").write_text(json.dumps(c.to_dict()))
    head = "t" if stage == 2 or not c.two_branch else ("ss" if c.ssh else "t")
    report = {"split": "val", "run": str(d), "method": c.method, "stage": stage, "head": head, "dataset": dataset,
              "eval_crop": eval_crop, "miou": miou, "pixel_acc": 0.9, "mean_acc": 0.5, "total_time_s": 300.0,
              "per_class_iou": {k: miou for k in classes}}
    if by_head:  # {head: mIoU}, as trainer run records both heads of the two-branch network
        report["by_head"] = {h: {"miou": v, "pixel_acc": 0.9, "mean_acc": 0.5, "per_class_iou": {k: v for k in classes}}
                             for h, v in by_head.items()}
    (d / "report.json").write_text(json.dumps(report))
    return d


@pytest.fixture
def five(tmp_path):
    """One run of each method, the demo preset's budget."""
    steps = dict(iters1=300, iters2=150)
    return [fake_run(tmp_path, "cutmix", 0.06, stage=1, method="cutmix", **steps),
            fake_run(tmp_path, "cc", 0.08, method="sourcesep-cc", mixed_strategy="clustered", mixed_delta="0.7:1", **steps),
            fake_run(tmp_path, "deeplabv3", 0.05, stage=1, method="deeplabv3", **steps),
            fake_run(tmp_path, "cm", 0.09, method="sourcesep-cm", **steps),
            fake_run(tmp_path, "mixup", 0.04, stage=1, method="mixup", **steps)]


def _rows(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_overall_table_orders_the_methods_as_the_paper(five, tmp_path):
    result = make_report(ReportConfig(runs=tuple(map(str, five)), out=str(tmp_path / "rep")))
    assert result["tables"] == ["overall", "per_class"]  # no ablation varies: no ablation table
    rows = _rows(tmp_path / "rep" / "overall.csv")
    assert rows[0] == ["method", "variant", "backbone", "head", "mIoU", "pixel acc", "mean class acc", "run"]
    assert [r[0] for r in rows[1:]] == ["DeepLabv3", "DeepLabv3 + Mixup", "DeepLabv3 + CutMix",
                                        "DeepLabv3 + SourceSep-CC", "DeepLabv3 + SourceSep-CM"]
    assert [r[4] for r in rows[1:]] == ["5.0000", "4.0000", "6.0000", "8.0000", "9.0000"]
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "| DeepLabv3 + SourceSep-CM | - | resnet50 | S_t | 9.00 |" in page  # no by_head recorded: its own head
    assert "![mIoU by run](miou.png)" in page and (tmp_path / "rep" / "miou.png").stat().st_size > 1000
    assert "| deeplabv3 | DeepLabv3 | 450 (one stage) |" in page and "| cm | DeepLabv3 + SourceSep-CM | 300 + 150 |" in page
    assert "trainer run --shards /data/out --method sourcesep-cm --name cm --iters1 300 --iters2 150" in page


def test_ablation_tables_appear_with_their_runs(five, tmp_path):
    steps = dict(iters1=300, iters2=150)
    ablations = [
        fake_run(tmp_path, "cc-no-dn", 0.07, stage=1, method="sourcesep-cc", denoise=False, mixed_strategy="clustered",
                 mixed_delta="0.7:1", **steps),
        fake_run(tmp_path, "cc-random", 0.075, method="sourcesep-cc", mixed_strategy="random", mixed_delta="0.7:1",
                 **steps),
        fake_run(tmp_path, "cm-max2", 0.085, method="sourcesep-cm", gamma=2, gamma_rule="skip", **steps),
        fake_run(tmp_path, "cm-inf", 0.087, method="sourcesep-cm", gamma=math.inf, **steps),
    ]
    out = tmp_path / "rep"
    result = make_report(ReportConfig(runs=tuple(map(str, five + ablations)), out=str(out),
                                      page=str(tmp_path / "docs" / "results.md")))
    assert result["tables"] == ["overall", "denoising", "pairing", "gamma", "per_class"]  # SSH never varied
    dn = _rows(out / "denoising.csv")
    assert dn[1][0] == "DeepLabv3"  # the baseline row, as in the paper
    assert ["DeepLabv3 + SourceSep-CC (w/o DN)", "-", "7.0000", "cc-no-dn"] in dn
    assert ["DeepLabv3 + SourceSep-CC (w/ DN)", "R_fb", "7.5000", "cc-random"] in dn
    pairing = _rows(out / "pairing.csv")
    assert {(r[1], r[5]) for r in pairing[2:]} == {("C_fb", "cc"), ("C_fb", "cc-no-dn"), ("R_fb", "cc-random")}
    gamma = _rows(out / "gamma.csv")
    assert [r[0] for r in gamma[1:]] == ["DeepLabv3", "DeepLabv3 + SourceSep-CM (max = 2)",
                                         "DeepLabv3 + SourceSep-CM (max = 3 + γ-thres)",
                                         "DeepLabv3 + SourceSep-CM (max = ∞ + γ-thres)"]
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "![mIoU by run](../rep/miou.png)" in page  # relative to the page
    assert "--gamma inf" in page and "--no-denoise" in page


@pytest.mark.parametrize("change, message", [
    (dict(dataset={**DATASET, "ids_sha256": "other"}), "was evaluated on other data than"),
    (dict(classes=["background", "cat", "dog", "box"]), "has classes"),
    (dict(eval_crop=513), "was evaluated with eval_crop 513"),
])
def test_runs_of_other_data_classes_or_protocol_are_refused(tmp_path, change, message):
    a = fake_run(tmp_path, "a", 0.1, method="deeplabv3", iters1=1, iters2=1)
    b = fake_run(tmp_path, "b", 0.1, method="mixup", iters1=1, iters2=1, **change)
    result = CliRunner().invoke(trainer_cli, ["report", str(a), str(b), "--out", str(tmp_path / "rep")])
    assert result.exit_code != 0 and message in result.output
    assert len(result.output.strip().splitlines()) == 1  # one line, no traceback


def test_one_setting_under_two_budget_protocols_is_refused_as_one_seed_group(tmp_path):
    epochs = dict(method="sourcesep-cc", epochs1=1, epochs2=1)  # the same stages under either protocol
    a = fake_run(tmp_path, "cc-s0", 0.1, seed=0, **epochs)
    b = fake_run(tmp_path, "cc-s1", 0.2, seed=1, budget="epochs", **epochs)
    result = CliRunner().invoke(trainer_cli, ["report", str(a), str(b), "--out", str(tmp_path / "rep")])
    assert result.exit_code != 0 and "under two budget protocols" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_runs_from_before_the_budget_field_pool_with_steps_runs_and_epochs_runs_stand_apart(tmp_path):
    steps = dict(method="deeplabv3", epochs1=2, epochs2=1)
    old = fake_run(tmp_path, "dl-s0", 0.30, stage=1, seed=0, **steps)
    config = json.loads((old / "config.json").read_text())
    del config["budget"], config["delta_min"]  # config.json as written before both fields
    (old / "config.json").write_text(json.dumps(config))
    new = fake_run(tmp_path, "dl-s1", 0.32, stage=1, seed=1, **steps)
    papers = [fake_run(tmp_path, f"dl-ep-s{s}", m, stage=1, seed=s, budget="epochs", **steps)
              for s, m in ((0, 0.20), (1, 0.22))]  # 2 epochs, not 2 + 1: another setting, no refusal
    make_report(ReportConfig(runs=tuple(map(str, [old, new, *papers])), out=str(tmp_path / "rep")))
    seeds = {r[0]: r[1] for r in _rows(tmp_path / "rep" / "seeds.csv")[1:]}
    assert seeds == {"DeepLabv3, resnet50": "2", "DeepLabv3 (epochs budget), resnet50": "2"}
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "| dl-ep-s0 | DeepLabv3 (epochs budget) | 2 epochs (one stage) |" in page
    assert "| dl-s0 | DeepLabv3 | 3 epochs (one stage) |" in page and "--budget epochs" in page


def test_unfinished_run_is_refused(tmp_path):
    d = fake_run(tmp_path, "a", 0.1)
    (d / "report.json").unlink()
    with pytest.raises(ValueError, match="no report.json; not a finished run"):
        load_run(d)


def test_plugged_in_builder_runs_only_when_a_run_has_its_section(five, tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "_BUILDERS", list(report_module._BUILDERS))
    calls = []

    @table_builder("suites.blur")
    def blur_tables(runs):
        calls.append([r.name for r in runs])
        rows = [[r.name, 100 * r.section("suites.blur")["miou"]] for r in runs if r.section("suites.blur")]
        return [Table("blur", "Blur", ["run", "mIoU"], rows)]

    make_report(ReportConfig(runs=tuple(map(str, five)), out=str(tmp_path / "none")))
    assert calls == [] and not (tmp_path / "none" / "blur.csv").exists()
    # An evaluation written into the run directory (trainer eval --out runs/NAME/...) carries the section.
    (five[3] / "eval-stage2-val").mkdir()
    (five[3] / "eval-stage2-val" / "suites.json").write_text(json.dumps({"suites": {"blur": {"miou": 0.02}}}))
    result = make_report(ReportConfig(runs=tuple(map(str, five)), out=str(tmp_path / "rep")))
    assert "blur" in result["tables"] and _rows(tmp_path / "rep" / "blur.csv") == [["run", "mIoU"], ["cm", "2.0000"]]
    assert "## Blur" in (tmp_path / "rep" / "report.md").read_text()


def test_run_command_rebuilds_the_same_config(tmp_path, monkeypatch):
    import trainer.train

    seen = []
    monkeypatch.setattr(trainer.train, "run", lambda config: seen.append(config) or {})
    from trainer.config import PRESETS

    configs = [TrainConfig(shards="/o", name="x", method="sourcesep-cm", gamma=math.inf, gamma_rule="skip",
                           alpha=0.4, progress=False, **PRESETS["demo"]),
               TrainConfig(shards="/o", name="z", method="deeplabv3", backbone="resnet18", output_stride=8,
                           optimizer="adamw", weight_decay=0.01, warmup=5, scale=(1.0, 1.0), grad_clip=2.0,
                           eval_every=7, iters1=3, iters2=2),
               TrainConfig(shards="/o", name="w", method="sourcesep-cc", ppa_eps=1.0, eval_every=0, iters1=3, iters2=2),
               TrainConfig(shards="/o", name="v", method="deeplabv3", **PRESETS["ijcv-r101"]),
               TrainConfig(shards="/o", name="u", method="sourcesep-cm", **{**PRESETS["bmvc-r101"], "epochs2": 3}),
               TrainConfig(shards="/o", name="t", method="sourcesep-cm", budget="epochs", delta_min=0.75,
                           **PRESETS["ijcv-r50"]),
               TrainConfig(shards="/o", name="s", method="mixup", budget="epochs", epochs1=2, epochs2=1),
               TrainConfig(shards="/o", name="y", method="sourcesep-cc", mixed="/o/mixed-r", ssh=False, denoise=False,
                           iters1=5, iters2=0, lr1=0.02, threads=1)]
    for config in configs:
        args = shlex.split(run_command(config))
        assert args[:2] == ["trainer", "run"]
        result = CliRunner().invoke(trainer_cli, args[1:])
        assert result.exit_code == 0, result.output
        assert seen.pop() == config
    by_name = {c.name: run_command(c) for c in configs}
    assert "--preset ijcv-r101" in by_name["v"] and "--preset" not in by_name["u"]


def test_report_of_a_real_tiny_run_with_fake_companions(shared_shards, tmp_path):
    tiny = dict(backbone="mobilenet_v3_large", crop=32, batch_size=4, iters1=1, iters2=1, workers=0, device="cpu",
                progress=False, threads=1)
    run(TrainConfig(shards=str(shared_shards), out=str(tmp_path), name="real", method="deeplabv3", **tiny))
    real = json.loads((tmp_path / "real" / "report.json").read_text())
    cm = fake_run(tmp_path, "cm", 0.2, method="sourcesep-cm", dataset=real["dataset"], iters1=1, iters2=1)
    result = CliRunner().invoke(trainer_cli, ["report", str(tmp_path / "real"), str(cm), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "rep" / "overall.csv")
    assert [r[-1] for r in rows[1:]] == ["real", "cm"]
    assert float(rows[1][4]) == pytest.approx(100 * real["miou"], abs=1e-4)


def test_seeds_of_one_setting_give_mean_std_and_a_verdict_against_the_spread(tmp_path):
    steps = dict(iters1=300, iters2=150)
    # seed 0 validated and checkpointed more often, and was given stage-2 options a single-head
    # baseline never uses: the same setting all the same (it computes the same)
    runs = [fake_run(tmp_path, f"dl-s{seed}", miou, stage=1, method="deeplabv3", seed=seed, **steps,
                     **({"eval_every": 50, "checkpoint_every": 25, "lr2": 1e-4, "ppa_eps": 1.0} if seed == 0 else {}))
            for seed, miou in zip((0, 1, 2), (0.30, 0.32, 0.34))]
    runs += [fake_run(tmp_path, f"cc-s{seed}", miou, method="sourcesep-cc", seed=seed, **steps)
             for seed, miou in zip((0, 1, 2), (0.40, 0.41, 0.42))]
    runs += [fake_run(tmp_path, f"cm-s{seed}", miou, method="sourcesep-cm", seed=seed, **steps)
             for seed, miou in zip((0, 1, 2), (0.33, 0.38, 0.43))]
    result = make_report(ReportConfig(runs=tuple(map(str, runs)), out=str(tmp_path / "rep")))
    assert {"seeds", "per_class_seeds", "differences"} <= set(result["tables"])
    seeds = {r[0]: r for r in _rows(tmp_path / "rep" / "seeds.csv")[1:]}
    dl = seeds["DeepLabv3, resnet50"]
    assert dl[1] == "3" and float(dl[2]) == pytest.approx(32.0) and float(dl[3]) == pytest.approx(2.0)
    assert (dl[4], dl[5], dl[6]) == ("30.0000", "34.0000", "0, 1, 2")
    verdicts = {(r[0].split(",")[0], r[1].split(",")[0]): r[4] for r in _rows(tmp_path / "rep" / "differences.csv")[1:]}
    assert verdicts[("DeepLabv3", "DeepLabv3 + SourceSep-CC")] == "B higher"  # 30-34 vs 40-42: apart
    assert verdicts[("DeepLabv3", "DeepLabv3 + SourceSep-CM")] == "within the spread"  # 33-43 overlaps 30-34
    assert verdicts[("DeepLabv3 + SourceSep-CC", "DeepLabv3 + SourceSep-CM")] == "within the spread"
    per_class = _rows(tmp_path / "rep" / "per_class_seeds.csv")
    assert per_class[1][1:] == ["32.00 ± 2.00", "41.00 ± 1.00", "38.00 ± 5.00"]


def test_one_seed_per_setting_adds_no_seed_tables(five, tmp_path):
    result = make_report(ReportConfig(runs=tuple(map(str, five)), out=str(tmp_path / "rep")))
    assert not {"seeds", "per_class_seeds", "differences"} & set(result["tables"])


def test_report_takes_each_runs_own_head_by_default_the_papers_on_request_and_says_which(tmp_path):
    steps = dict(iters1=3, iters2=2)
    runs = [fake_run(tmp_path, "cm", 0.09, method="sourcesep-cm", by_head={"t": 0.09, "ss": 0.10}, **steps),
            fake_run(tmp_path, "cm-no-ssh", 0.07, method="sourcesep-cm", ssh=False, by_head={"t": 0.07}, **steps),
            fake_run(tmp_path, "deeplabv3", 0.05, stage=1, method="deeplabv3", **steps)]
    args = ["report", *map(str, runs), "--out", str(tmp_path / "rep")]
    result = CliRunner().invoke(trainer_cli, args)  # the default: each run's own prediction (report.json's head)
    assert result.exit_code == 0, result.output
    rows = {r[-1]: r for r in _rows(tmp_path / "rep" / "overall.csv")[1:]}
    assert (rows["cm"][3], rows["cm"][4]) == ("S_t", "9.0000")  # after stage 2 the run predicts with S_t
    assert "Prediction head: each run's own prediction" in (tmp_path / "rep" / "report.md").read_text()

    args += ["--head", "paper"]
    result = CliRunner().invoke(trainer_cli, args)
    assert result.exit_code == 0, result.output
    assert "(head: paper)" in result.output
    rows = {r[-1]: r for r in _rows(tmp_path / "rep" / "overall.csv")[1:]}
    assert (rows["cm"][3], rows["cm"][4]) == ("S_ss", "10.0000")  # IJCV 3.2.2: the final dominant prediction
    assert (rows["cm-no-ssh"][3], rows["deeplabv3"][3]) == ("S_t", "S_t")  # their one head
    per_class = _rows(tmp_path / "rep" / "per_class.csv")
    assert per_class[1][per_class[0].index("cm")] == "10.0000"  # every table takes the chosen head
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "Prediction head: S_ss for the source separation network" in page
    assert "| cm | DeepLabv3 + SourceSep-CM | 3 + 2 | 5.0 min | stage 2, head ss |" in page

    result = CliRunner().invoke(trainer_cli, [*args, "--head", "t"])
    assert result.exit_code == 0, result.output
    rows = {r[-1]: r for r in _rows(tmp_path / "rep" / "overall.csv")[1:]}
    assert (rows["cm"][3], rows["cm"][4]) == ("S_t", "9.0000")
    assert "--head t" in (tmp_path / "rep" / "report.md").read_text()  # the command that made it
    with pytest.raises(ValueError, match="^head:"):
        ReportConfig(runs=("a",), out="o", head="p")


def test_stage2_options_split_a_two_branch_setting_but_not_a_baseline(tmp_path):
    from trainer.report import load_run, seed_groups

    steps = dict(iters1=300, iters2=150)
    cc = [fake_run(tmp_path, f"cc-s{s}", 0.4, method="sourcesep-cc", seed=s, ppa_eps=eps, **steps)
          for s, eps in ((0, 1e-6), (1, 1.0))]
    dl = [fake_run(tmp_path, f"dl-s{s}", 0.3, stage=1, method="deeplabv3", seed=s, ppa_eps=eps, **steps)
          for s, eps in ((0, 1e-6), (1, 1.0))]
    groups = seed_groups([load_run(p) for p in cc + dl])
    assert sorted(len(g) for g in groups) == [1, 1, 2]  # SourceSep's ε is a setting; DeepLabv3 never uses it


def test_settings_that_would_read_alike_are_named_by_the_options_they_differ_in(tmp_path):
    steps = dict(iters1=300, iters2=150)
    runs = [fake_run(tmp_path, f"cc{eps:g}-s{s}", 0.2 + 0.1 * (eps == 1.0) + 0.01 * s, method="sourcesep-cc",
                     seed=s, ppa_eps=eps, **steps) for eps in (1e-6, 1.0) for s in (0, 1)]
    runs += [fake_run(tmp_path, f"dl-s{s}", 0.3, stage=1, method="deeplabv3", seed=s, **steps) for s in (0, 1)]
    result = CliRunner().invoke(trainer_cli, ["report", *map(str, runs), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    rows = {r[0]: r for r in _rows(tmp_path / "rep" / "seeds.csv")[1:]}
    cc = "DeepLabv3 + SourceSep-CC, resnet50"
    assert set(rows) == {f"{cc}, --ppa-eps 1e-06", f"{cc}, --ppa-eps 1", "DeepLabv3, resnet50"}
    assert float(rows[f"{cc}, --ppa-eps 1"][2]) == pytest.approx(30.5)
    header = _rows(tmp_path / "rep" / "per_class_seeds.csv")[0]
    assert len(set(header)) == len(header) == 4


def test_ssh_table_says_once_which_runs_skipped_the_denoising_stage(tmp_path):
    steps = dict(iters1=300, iters2=150)
    runs = [fake_run(tmp_path, "cc", 0.08, method="sourcesep-cc", **steps),
            fake_run(tmp_path, "cc-no-ssh", 0.09, method="sourcesep-cc", ssh=False, **steps),
            fake_run(tmp_path, "cc-no-dn", 0.07, stage=1, method="sourcesep-cc", denoise=False, **steps)]
    make_report(ReportConfig(runs=tuple(map(str, runs)), out=str(tmp_path / "rep")))
    rows = {r[-1]: r[:2] for r in _rows(tmp_path / "rep" / "ssh.csv")[1:]}
    assert rows == {"cc": ["DeepLabv3 + SourceSep-CC (w/ SSH)", "w/ DN"],
                    "cc-no-ssh": ["DeepLabv3 + SourceSep-CC (w/o SSH)", "w/ DN"],
                    "cc-no-dn": ["DeepLabv3 + SourceSep-CC (w/ SSH)", "w/o DN"]}
