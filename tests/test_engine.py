"""trainer run / eval / predict end to end on tiny shards (mobilenet_v3_large, 32 px crops)."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import trainer.methods as methods_module
import trainer.train as train_module
from cli import trainer as trainer_cli
from trainer import checkpoint as ckpt_io
from trainer import losses
from trainer.config import PRESETS, TrainConfig
from trainer.precision import resolve_precision
from trainer.train import TrainingDiverged, run

from conftest import write_shard_dir

TINY = dict(backbone="mobilenet_v3_large", crop=32, batch_size=4, iters1=2, iters2=2, workers=0, device="cpu",
            log_every=1, checkpoint_every=1, progress=False, threads=1)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shared_shards):
    """One completed tiny run, shared by the tests that only look at its outputs."""
    out = tmp_path_factory.mktemp("runs")
    report = run(TrainConfig(shards=str(shared_shards), out=str(out), name="tiny", **TINY))
    return out / "tiny", report


def test_config_errors_name_the_field():
    for bad, field in [(dict(crop=8), "crop"), (dict(backbone="vgg"), "backbone"), (dict(accum=0), "accum"),
                       (dict(iters1=5, epochs1=2), "iters1"), (dict(scale=(2.0, 1.0)), "scale"),
                       (dict(device="tpu"), "device"), (dict(lr2=0), "lr2")]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            TrainConfig(shards="out", **bad)
    assert TrainConfig(shards="out").stage_length(1) == ("epochs", 30)
    demo = TrainConfig(shards="out", **PRESETS["demo"])
    assert demo.stage_length(2) == ("iters", 300)
    # stage 2 with the papers' SGD after AdamW in stage 1 (docs/experiments.md §7); the demo bounds
    # ℓ_PPA's spike with ε = 1 (§8), photos-cpu keeps the papers' ε (docs/photos.md)
    assert demo.stage_optimizer(1)[0] == "adamw" and demo.stage_optimizer(2) == ("sgd", 1e-2, 5e-4)
    assert demo.ppa_eps == 1.0 and demo.class_weights == "median-freq"
    assert demo.ssh_detach  # the SSH's loss trains F_ss alone (§9)
    assert TrainConfig(shards="out", **PRESETS["photos-cpu"]).ppa_eps == 1e-6
    config = TrainConfig(shards="out", **TINY)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_run_writes_config_checkpoints_metrics_and_report(finished_run):
    run_dir, report = finished_run
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "metrics.jsonl", "stage1.pt", "stage2.pt", "last.pt",
                                                  "report.json", "report.md"}
    assert json.loads((run_dir / "config.json").read_text())["name"] == "tiny"
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines = [m for m in logged if "loss" in m]
    assert [(m["stage"], m["step"]) for m in lines] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # val mIoU at each stage's end: S_ss (and S_t) after stage 1, the final report's number last
    val = [m for m in logged if "val_miou" in m]
    assert [(m["stage"], m["step"], m["val_head"]) for m in val] == [(1, 2, "ss"), (2, 2, "t")]
    assert {"val_miou_t", "val_miou_ss", "val_pixel_acc"} <= val[0].keys()
    assert (run_dir / "curves.png").stat().st_size > 0
    assert {"loss", "ce_t", "ce_p", "ce_ss", "lr", "samples_per_s", "data_wait_s"} <= lines[0].keys()
    assert {"loss", "ce_t", "ppa"} <= lines[2].keys()
    assert lines[0]["lr"] == pytest.approx(2.5e-4 * 0.5 ** 0.9)  # poly after 1 of 2 steps
    saved = json.loads((run_dir / "report.json").read_text())
    assert list(saved["per_class_iou"]) == ["background", "disc", "bar", "box"]
    assert saved["head"] == "t" and 0 <= saved["miou"] <= 1 and 0 <= saved["pixel_acc"] <= 1
    assert saved["precision"] == resolve_precision("auto", torch.device("cpu")).name  # --amp auto, resolved
    assert saved["miou"] == report["miou"] == saved["by_head"]["t"]["miou"]
    assert val[-1]["val_miou_t"] == pytest.approx(saved["miou"], abs=1e-6)  # metrics.jsonl rounds to 6 digits
    assert set(saved["by_head"]) == {"t", "ss"}
    assert val[-1]["val_miou_ss"] == pytest.approx(saved["by_head"]["ss"]["miou"], abs=1e-6)
    assert "| mIoU |" in (run_dir / "report.md").read_text()


def test_checkpoints_load_with_weights_only_and_hold_the_training_state(finished_run):
    run_dir, _ = finished_run
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["position"] == {"stage": 2, "step": 2, "epoch": 0, "batch": 2} and last["stage_done"]
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "model_config", "classes"} <= last.keys()
    assert set(last["rng"]) >= {"python", "numpy", "torch"}
    stage1 = torch.load(run_dir / "stage1.pt", weights_only=True)
    assert stage1["stage"] == 1 and stage1["model_config"]["backbone"] == "mobilenet_v3_large"
    assert not torch.equal(stage1["model"]["classifier.4.weight"], last["model"]["classifier.4.weight"])
    # Stage 2 leaves the frozen separation head alone.
    assert torch.equal(stage1["model"]["ssh.0.weight"], last["model"]["ssh.0.weight"])


def test_eval_and_predict_commands(finished_run, shared_shards, tmp_path):
    run_dir, report = finished_run
    result = CliRunner().invoke(trainer_cli, ["eval", "--checkpoint", str(run_dir / "stage2.pt"), "--shards",
                                              str(shared_shards), "--workers", "0", "--device", "cpu", "--quiet",
                                              "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["miou"] == pytest.approx(report["miou"])
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 52, 3), 120, np.uint8)).save(image)
    result = CliRunner().invoke(trainer_cli, ["predict", "--checkpoint", str(run_dir / "stage2.pt"), str(image),
                                              "--out", str(tmp_path / "pred"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    pred = Image.open(tmp_path / "pred" / "photo.png")
    assert pred.mode == "P" and pred.size == (52, 40) and np.array(pred).max() < 4
    assert pred.getpalette()[3:6] == [128, 0, 0]  # the VOC colour of class 1


def test_checkpoint_of_another_class_set_or_backbone_is_refused(finished_run, tmp_path):
    run_dir, _ = finished_run
    other = tmp_path / "other"
    write_shard_dir(other / "val", "standard", [4], seed=9, vary=True)
    manifest = json.loads((other / "val" / "manifest.json").read_text())
    manifest["classes"]["names"] = ["background", "cat", "dog", "cow"]
    (other / "val" / "manifest.json").write_text(json.dumps(manifest))
    with h5py.File(other / "val" / "shard-00000.h5", "a") as f:  # shard and manifest agree: only the checkpoint differs
        f.attrs["class_names"] = np.array(manifest["classes"]["names"], dtype=object)
    result = CliRunner().invoke(trainer_cli, ["eval", "--checkpoint", str(run_dir / "stage2.pt"), "--shards",
                                              str(other), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 1 and "differ from the data's" in result.output
    with pytest.raises(ckpt_io.CheckpointError, match="backbone='mobilenet_v3_large', this run needs backbone='resnet50'"):
        train_module.check_init(str(run_dir / "stage2.pt"), train_module.ModelConfig(num_classes=4, backbone="resnet50"))


def test_resume_refuses_other_options_and_missing_runs(finished_run, shared_shards):
    run_dir, _ = finished_run
    changed = TrainConfig(shards=str(shared_shards), out=str(run_dir.parent), name="tiny", resume=True,
                          **{**TINY, "crop": 40})
    with pytest.raises(ValueError, match=r"crop \(was 32, now 40\)"):
        run(changed)
    with pytest.raises(ValueError, match="nothing to resume"):
        run(changed.replace(name="never-ran"))
    with pytest.raises(ValueError, match="already holds a run"):
        run(changed.replace(resume=False))


def test_nan_loss_stops_the_run_naming_the_step(shared_shards, tmp_path, monkeypatch):
    calls = []

    def poisoned(out, label, phantom, delta, ignore_index, weight=None):
        loss, terms = losses.stage1_loss(out, label, phantom, delta, ignore_index, weight)
        calls.append(1)
        if len(calls) == 3:
            loss, terms = loss * math.nan, {**terms, "loss": math.nan}
        return loss, terms

    monkeypatch.setattr(methods_module, "stage1_loss", poisoned)  # the stage-1 criterion's loss
    with pytest.raises(TrainingDiverged, match="stage 1 step 3: loss is nan"):
        run(TrainConfig(shards=str(shared_shards), out=str(tmp_path), name="nan", **{**TINY, "iters1": 4}))
    last = ckpt_io.load(tmp_path / "nan" / "last.pt")
    assert last["position"]["step"] == 2
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert not (tmp_path / "nan" / "report.json").exists()


def test_run_command_reports_bad_input_in_one_line(tmp_path, monkeypatch):
    result = CliRunner().invoke(trainer_cli, ["run", "--shards", str(tmp_path / "nowhere"), "--device", "cpu"])
    assert result.exit_code == 1 and "manifest.json: missing" in result.output and "Traceback" not in result.output
    # Explicit options win over the preset; a stage length of the other kind replaces the preset's.
    seen = {}

    def fake_run(config):
        seen["config"] = config
        return {}

    monkeypatch.setattr(train_module, "run", fake_run)
    result = CliRunner().invoke(trainer_cli, ["run", "--shards", "out", "--preset", "demo", "--crop", "64",
                                              "--epochs1", "2", "--no-ssh", "--quiet"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.crop, config.backbone, config.ssh, config.progress) == (64, "resnet18", False, False)
    assert (config.optimizer, config.optimizer2, config.scale) == ("adamw", "sgd", (1.0, 1.0))
    assert config.stage_length(1) == ("epochs", 2) and config.stage_length(2) == ("iters", 300)
    assert config.ssh_detach is False  # the papers' end-to-end SSH unless asked
    result = CliRunner().invoke(trainer_cli, ["run", "--shards", "out", "--preset", "demo", "--ssh-detach"])
    assert result.exit_code == 0, result.output
    assert seen["config"].ssh_detach is True
    for refused in (["--method", "deeplabv3", "--ssh-detach"], ["--no-ssh", "--ssh-detach"]):
        result = CliRunner().invoke(trainer_cli, ["run", "--shards", "out", "--preset", "demo", *refused])
        assert result.exit_code == 1 and "ssh_detach" in result.output and "Traceback" not in result.output, refused
    # a preset that detaches the SSH still serves the methods without one, and --ssh-end-to-end undoes it
    monkeypatch.setitem(PRESETS, "demo", {**PRESETS["demo"], "ssh_detach": True})
    for args, detached in ((["--method", "sourcesep-cm"], True), (["--ssh-end-to-end"], False),
                           (["--method", "deeplabv3"], False), (["--no-ssh"], False)):
        result = CliRunner().invoke(trainer_cli, ["run", "--shards", "out", "--preset", "demo", *args])
        assert result.exit_code == 0, (args, result.output)
        assert seen["config"].ssh_detach is detached, args


def test_warmup_rises_linearly_then_poly_decays_to_zero():
    from trainer.train import lr_factor

    factors = [lr_factor(i, total=10, warmup=4, power=0.9) for i in range(11)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(0.6 ** 0.9) and factors[10] == 0.0
    assert [lr_factor(i, total=10, warmup=0, power=1.0) for i in (0, 5)] == [1.0, 0.5]


def test_adamw_warmup_clipping_ppa_eps_and_ssh_detach_reach_the_run(tmp_path, shared_shards):
    config = TrainConfig(shards=str(shared_shards), out=str(tmp_path), name="adamw", optimizer="adamw",
                         weight_decay=0.01, warmup=2, grad_clip=0.5, ppa_eps=1.0, eval_every=1, ssh_detach=True,
                         **{**TINY, "iters1": 3, "iters2": 2})
    run(config)
    last = torch.load(tmp_path / "adamw" / "last.pt", weights_only=True)
    assert "exp_avg_sq" in next(iter(last["optimizer"]["state"].values()))  # Adam moments, not SGD momentum
    assert last["model_config"]["ssh_detach"] is True  # the network the run built detaches its SSH
    lines = [json.loads(line) for line in (tmp_path / "adamw" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in lines if "loss" in m]
    assert [m["lr"] for m in train_lines[:2]] == [pytest.approx(2.5e-4 * 1.0), pytest.approx(2.5e-4 * (1 / 3) ** 0.9)]
    # with ε = 1 the phantom term log(1 + Σ ReLU(S_p)) is never negative
    assert all(m["ppa"] >= 0 for m in train_lines if m["stage"] == 2)
    # --eval-every 1: a val line after every step of both stages, the last one the final report's
    val = [(m["stage"], m["step"]) for m in lines if "val_miou" in m]
    assert val == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]


def test_config_refuses_bad_new_options_naming_the_field():
    for bad, field in [(dict(optimizer="lbfgs"), "optimizer"), (dict(warmup=-1), "warmup"), (dict(ppa_eps=0), "ppa_eps"),
                       (dict(grad_clip=0), "grad_clip"), (dict(eval_every=-1), "eval_every")]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            TrainConfig(shards="out", **bad)
