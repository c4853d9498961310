"""trainer run --method: each method's config, data, batch mixing and loss, and tiny real runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from blendgen.shards.directory import ShardDir
from cli import trainer as trainer_cli
from trainer.config import METHODS, TrainConfig
from trainer.precision import resolve_precision
from trainer.losses import per_image_ce
from trainer.methods import (
    batch_generator,
    batch_mixer,
    criterion,
    mix_cooccurrence,
    stage_dir,
    to_pixels,
)
from trainer.mixing import cooccurrence_mix, cutmix, mixup
from trainer.train import run

from conftest import write_shard_dir

IGNORE = 255
TINY = dict(backbone="mobilenet_v3_large", crop=32, batch_size=4, iters1=2, iters2=1, workers=0, device="cpu",
            log_every=1, checkpoint_every=10, progress=False, threads=1)


def tiny_batch(seed: int = 0, b: int = 6, h: int = 12, w: int = 10) -> tuple[torch.Tensor, dict]:
    """uint8 images and a batch dict as the loader gives it: label maps over ids 0..3 with a
    padded (255) bottom band, no phantom, δ = 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    label = torch.randint(0, 4, (b, h, w), generator=g)
    label[:, -3:, :] = IGNORE  # crop padding
    batch = {"label": label, "phantom": torch.full_like(label, IGNORE), "delta": torch.ones(b), "key": list("abcdef")[:b]}
    return x, batch


COOC = torch.tensor([[0, 5, 1], [5, 0, 2], [1, 2, 0]], dtype=torch.float64)  # classes 1, 2, 3
IDS = torch.tensor([1, 2, 3])


# -- config ---------------------------------------------------------------------------------------
def test_method_options_are_refused_where_the_method_has_no_use_for_them():
    for bad, field in [(dict(method="resnet"), "method"), (dict(method="deeplabv3", ssh=False), "ssh"),
                       (dict(method="mixup", denoise=False), "denoise"), (dict(method="sourcesep-cm", mixed="m"), "mixed"),
                       (dict(method="sourcesep-cc", alpha=1.0), "alpha"), (dict(method="mixup", gamma=3), "gamma"),
                       (dict(method="sourcesep-cm", gamma_rule="never"), "gamma_rule"),
                       (dict(method="sourcesep-cm", alpha=-1.0), "alpha"),
                       (dict(method="cutmix", iters1=10, epochs2=1), "iters1")]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            TrainConfig(shards="out", **bad)


def test_method_defaults_are_filled_in_and_survive_json():
    cm = TrainConfig(shards="out", method="sourcesep-cm")
    assert (cm.alpha, cm.gamma, cm.gamma_rule) == (1.0, 3.0, "thres")
    assert TrainConfig(shards="out", method="mixup").alpha == 1.0
    assert TrainConfig(shards="out").alpha is None and TrainConfig(shards="out", method="deeplabv3").gamma is None
    no_max = TrainConfig(shards="out", method="sourcesep-cm", gamma=math.inf, gamma_rule="skip")
    saved = json.loads(json.dumps(no_max.to_dict(), allow_nan=False))  # strict JSON: "inf" as a string
    assert saved["gamma"] == "inf" and TrainConfig.from_dict(saved) == no_max


def test_stage_budgets_give_the_baselines_both_stages_in_one():
    steps = dict(iters1=300, iters2=150)
    for method in ("deeplabv3", "mixup", "cutmix"):
        c = TrainConfig(shards="out", method=method, **steps)
        assert not c.two_branch and c.stage_budget(1) == ("iters", 450) and c.stage_budget(2) == ("iters", 0)
    for method in ("sourcesep-cc", "sourcesep-cm"):
        c = TrainConfig(shards="out", method=method, **steps)
        assert c.two_branch and c.stage_budget(1) == ("iters", 300) and c.stage_budget(2) == ("iters", 150)
        assert c.replace(denoise=False).stage_budget(2) == ("iters", 0)
    assert TrainConfig(shards="out", method="cutmix").stage_budget(1) == ("epochs", 60)


def test_budget_and_delta_min_are_refused_where_they_contradict_or_mean_nothing():
    for bad, field in [(dict(budget="papers"), "budget"),
                       (dict(budget="epochs", iters1=10), "iters1"),
                       (dict(method="deeplabv3", budget="epochs", epochs1=2, iters2=5), "iters2"),
                       (dict(method="mixup", delta_min=0.7), "delta_min"),
                       (dict(method="mixup-cm", delta_min=0.7), "delta_min"),
                       (dict(method="sourcesep-cc", delta_min=0.7), "delta_min"),
                       (dict(method="sourcesep-cm", delta_min=0.3), "delta_min"),
                       (dict(method="sourcesep-cm", delta_min=0.7, alpha=0.0), "delta_min")]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            TrainConfig(shards="out", **bad)
    cm = TrainConfig(shards="out", method="sourcesep-cm", delta_min=0.7, budget="epochs", epochs1=2)
    assert (cm.delta_min, cm.budget, cm.stage_length(2)) == (0.7, "epochs", ("epochs", 30))  # unset: 30 epochs
    assert TrainConfig.from_dict(json.loads(json.dumps(cm.to_dict()))) == cm
    old = {k: v for k, v in TrainConfig(shards="out", iters1=3, iters2=2).to_dict().items()
           if k not in ("budget", "delta_min")}  # a config.json from before both fields
    assert TrainConfig.from_dict(old).budget == "steps" and TrainConfig.from_dict(old).delta_min is None


def test_epochs_budget_counts_passes_over_each_methods_own_shards(shared_shards):
    """shared_shards: mixed/ 24 samples, train/ 16; batch 4 -> 6 and 4 batches per epoch."""
    from types import SimpleNamespace

    from trainer.train import make_stage, train_dataset

    def totals(**options):
        c = TrainConfig(shards=str(shared_shards), batch_size=4, workers=0, device="cpu", **options)
        cpu = torch.device("cpu")
        r = SimpleNamespace(config=c, dist=SimpleNamespace(device=cpu, distributed=False, rank=0, world_size=1),
                            precision=resolve_precision("none", cpu), class_weight=None)
        model = torch.nn.Conv2d(3, 1, 1)
        model.ssh = None
        out = []
        for stage in (1, 2):
            if c.stage_budget(stage)[1] == 0:
                out.append(0)
                continue
            batches = len(train_dataset(r, ShardDir.open(stage_dir(c, stage))))
            out.append(make_stage(r, model, stage, batches, None, None).total_steps)
        return tuple(out)

    epochs = dict(budget="epochs", epochs1=2, epochs2=3)
    assert totals(method="sourcesep-cc", **epochs) == (2 * 6, 3 * 4)  # stage 1 over mixed/, stage 2 over train/
    assert totals(method="sourcesep-cm", **epochs) == (2 * 4, 3 * 4)
    for method in ("deeplabv3", "mixup", "cutmix", "mixup-cm"):  # the papers' stage-1 recipe alone
        assert totals(method=method, **epochs) == (2 * 4, 0)
    assert totals(method="deeplabv3", epochs1=2, epochs2=3) == ((2 + 3) * 4, 0)  # steps: both lengths, as before
    assert totals(method="deeplabv3", iters1=7, iters2=5) == (12, 0)
    assert totals(method="sourcesep-cc", iters1=7, iters2=5) == (7, 5)


def test_cli_budget_epochs_replaces_a_presets_steps_and_refuses_iters(monkeypatch):
    import trainer.train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "run", lambda config: seen.update(config=config) or
                        {"report_dir": "runs/x", "head": "t", "miou": 0.25, "pixel_acc": 0.5,
                         "per_class_iou": {"a": 0.25}, "budget": config.budget})
    result = CliRunner().invoke(trainer_cli, ["run", "--shards", "out", "--preset", "demo", "--budget", "epochs",
                                              "--epochs1", "1", "--method", "sourcesep-cm", "--delta-min", "0.7"])
    assert result.exit_code == 0, result.output
    c = seen["config"]
    assert (c.budget, c.stage_length(1), c.stage_length(2), c.delta_min) == ("epochs", ("epochs", 1), ("epochs", 30), 0.7)
    assert "budget epochs" in result.output.splitlines()[-1]  # the summary line names the protocol
    result = CliRunner().invoke(trainer_cli, ["run", "--shards", "out", "--preset", "ijcv-r50", "--budget", "epochs"])
    assert result.exit_code == 0 and seen["config"].stage_length(1) == ("epochs", 50)  # a preset's epochs stay
    result = CliRunner().invoke(trainer_cli, ["run", "--shards", "out", "--budget", "epochs", "--iters1", "5"])
    assert result.exit_code != 0 and "iters1: budget epochs" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_stage_dirs_follow_the_method(tmp_path):
    assert stage_dir(TrainConfig(shards="o"), 1).as_posix() == "o/mixed"
    assert stage_dir(TrainConfig(shards="o", mixed="o/mixed-random"), 1).as_posix() == "o/mixed-random"
    for method in METHODS:
        assert stage_dir(TrainConfig(shards="o", method=method), 2).as_posix() == "o/train"
        if method != "sourcesep-cc":
            assert stage_dir(TrainConfig(shards="o", method=method), 1).as_posix() == "o/train"


# -- batch mixing ---------------------------------------------------------------------------------
def test_batch_generator_depends_on_the_batch_position_only():
    def draw(*key):
        return torch.rand(3, generator=batch_generator(*key, device=torch.device("cpu")))

    assert torch.equal(draw(0, 0, 1, 2, 5), draw(0, 0, 1, 2, 5))
    for other in [(1, 0, 1, 2, 5), (0, 1, 1, 2, 5), (0, 0, 2, 2, 5), (0, 0, 1, 3, 5), (0, 0, 1, 2, 6)]:
        assert not torch.equal(draw(0, 0, 1, 2, 5), draw(*other))


def test_cooccurrence_batch_is_algorithm2_with_uint8_pixels_and_both_label_maps():
    x, batch = tiny_batch()
    mixed, out = mix_cooccurrence(x, batch, torch.Generator().manual_seed(7), cooc=COOC, object_ids=IDS,
                                  alpha=1.0, gamma=3, rule="thres", ignore_index=IGNORE)
    ref, dominant, phantom, delta = cooccurrence_mix(x, batch["label"], COOC, IDS, 1.0, 3,
                                                     torch.Generator().manual_seed(7))
    assert mixed.dtype == torch.uint8 and torch.equal(mixed, ref.round().clamp(0, 255).to(torch.uint8))
    assert torch.equal(out["label"], dominant) and torch.equal(out["phantom"], phantom)
    assert torch.equal(out["delta"], delta) and out["key"] == batch["key"]
    # The padded band is 255 in both targets: the loss never sees it.
    assert (out["label"][:, -3:] == IGNORE).all() and (out["phantom"][:, -3:] == IGNORE).all()
    assert ((out["delta"] >= 0.5) & (out["delta"] <= 1)).all()


def test_cooccurrence_skip_rule_leaves_pairs_over_gamma_unblended():
    x, batch = tiny_batch()
    label = batch["label"]
    label[0, :4] = 0
    label[0, :4, :3] = 1  # sample 0 holds all three classes, so any pair has more than 2
    kwargs = dict(cooc=COOC, object_ids=IDS, alpha=1.0, gamma=2, ignore_index=IGNORE)
    mixed, out = mix_cooccurrence(x, batch, torch.Generator().manual_seed(3), rule="skip", **kwargs)
    assert out["delta"][0] == 1 and torch.equal(mixed[0], x[0]) and (out["phantom"][0] == IGNORE).all()
    # Every pair here has more than γ = 2 classes; with γ = inf the same draws blend them all.
    _, blended = mix_cooccurrence(x, batch, torch.Generator().manual_seed(3), rule="skip", **{**kwargs, "gamma": math.inf})
    assert (blended["delta"] < 1).all()
    # "thres" blends the over-γ pair with δ = 0.9 instead (γ-thres, IJCV Table 11).
    _, thres = mix_cooccurrence(x, batch, torch.Generator().manual_seed(3), rule="thres", **kwargs)
    assert thres["delta"][0] == pytest.approx(0.9)


def test_mixup_and_cutmix_batches_and_their_losses(shared_shards):
    x, batch = tiny_batch()
    config = TrainConfig(shards=str(shared_shards), method="mixup", alpha=0.4)
    mix = batch_mixer(config, 1, ShardDir.open(stage_dir(config, 1)), torch.device("cpu"))
    mixed, out = mix(x, batch, torch.Generator().manual_seed(1))
    ref, label_a, label_b, lam = mixup(x, batch["label"], 0.4, torch.Generator().manual_seed(1))
    assert torch.equal(mixed, to_pixels(ref)) and torch.equal(out["phantom"], label_b) and torch.equal(out["delta"], lam)
    logits = torch.randn(6, 4, 12, 10)
    loss, terms = criterion("mixup", 1)({"t": logits}, out, IGNORE)
    expected = (lam * per_image_ce(logits, label_a) + (1 - lam) * per_image_ce(logits, label_b)).mean()
    assert loss.item() == pytest.approx(expected.item()) and set(terms) == {"ce_t", "ce_p", "loss"}

    config = config.replace(method="cutmix")
    mix = batch_mixer(config, 1, ShardDir.open(stage_dir(config, 1)), torch.device("cpu"))
    mixed, out = mix(x, batch, torch.Generator().manual_seed(1))
    ref_image, ref_label, *_ = cutmix(x, batch["label"], 0.4, torch.Generator().manual_seed(1))
    assert mixed.dtype == torch.uint8 and torch.equal(mixed, ref_image) and torch.equal(out["label"], ref_label)
    loss, _ = criterion("cutmix", 1)({"t": logits}, out, IGNORE)
    assert loss.item() == pytest.approx(per_image_ce(logits, ref_label).mean().item())


def test_mixup_cm_pairs_by_cooccurrence_and_trains_with_mixups_loss(shared_shards):
    # IJCV Table 10: Algorithm 2's partner and blend (no γ rule), Mixup's single-head loss
    x, batch = tiny_batch()
    config = TrainConfig(shards=str(shared_shards), method="mixup-cm", alpha=0.4)
    assert not config.two_branch and config.gamma is None
    shards = ShardDir.open(stage_dir(config, 1))
    mix = batch_mixer(config, 1, shards, torch.device("cpu"))
    mixed, out = mix(x, batch, torch.Generator().manual_seed(5))
    cooc = torch.as_tensor(shards.cooccurrence, dtype=torch.float64)
    ref, dominant, phantom, lam = cooccurrence_mix(x, batch["label"], cooc, shards.manifest["object_ids"], 0.4,
                                                   math.inf, torch.Generator().manual_seed(5))
    assert torch.equal(mixed, to_pixels(ref)) and torch.equal(out["label"], dominant)
    assert torch.equal(out["phantom"], phantom) and torch.equal(out["delta"], lam)
    logits = torch.randn(6, 4, 12, 10)
    loss, _ = criterion("mixup-cm", 1)({"t": logits}, out, IGNORE)
    expected = (lam * per_image_ce(logits, dominant) + (1 - lam) * per_image_ce(logits, phantom)).mean()
    assert loss.item() == pytest.approx(expected.item())


def test_sourcesep_cm_batches_take_delta_min_from_the_config(shared_shards):
    x, batch = tiny_batch()
    train = ShardDir.open(shared_shards / "train")
    cpu = torch.device("cpu")
    floored = batch_mixer(TrainConfig(shards="o", method="sourcesep-cm", gamma=math.inf, delta_min=0.8), 1, train, cpu)
    papers = batch_mixer(TrainConfig(shards="o", method="sourcesep-cm", gamma=math.inf), 1, train, cpu)
    got = torch.cat([floored(x, batch, torch.Generator().manual_seed(s))[1]["delta"] for s in range(50)])
    base = torch.cat([papers(x, batch, torch.Generator().manual_seed(s))[1]["delta"] for s in range(50)])
    assert (got >= torch.tensor(0.8)).all() and base.min() < 0.8  # the papers' δ goes below the floor
    assert torch.allclose(got, (0.8 + 0.2 * (2 * base.double() - 1)).float(), atol=1e-6)  # same draws, mapped


def test_only_online_methods_mix_and_only_in_stage_1(shared_shards):
    train = ShardDir.open(shared_shards / "train")
    cpu = torch.device("cpu")
    for method in ("sourcesep-cc", "deeplabv3"):
        assert batch_mixer(TrainConfig(shards="o", method=method), 1, train, cpu) is None
    for method in ("sourcesep-cm", "mixup", "cutmix", "mixup-cm"):
        assert batch_mixer(TrainConfig(shards="o", method=method), 2, train, cpu) is None
        assert batch_mixer(TrainConfig(shards="o", method=method), 1, train, cpu) is not None
    assert criterion("sourcesep-cm", 2).__name__ == "stage2_criterion"
    assert criterion("deeplabv3", 1).__name__ == "ce_criterion"


def test_cooccurrence_method_needs_the_matrix(tmp_path):
    d = write_shard_dir(tmp_path / "train", "standard", [4], seed=0)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["cooccurrence"] = None
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="co-occurrence matrix"):
        batch_mixer(TrainConfig(shards="o", method="sourcesep-cm"), 1, ShardDir.open(d), torch.device("cpu"))


# -- tiny real runs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def method_runs(tmp_path_factory, shared_shards):
    """One tiny finished run per method: {method: (run dir, report)}."""
    out = tmp_path_factory.mktemp("method-runs")
    return {m: (out / m, run(TrainConfig(shards=str(shared_shards), out=str(out), name=m, method=m, **TINY)))
            for m in METHODS}


def _metrics(run_dir):
    """The training lines of metrics.jsonl (not the val mIoU lines)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "loss" in m]


def test_each_method_trains_its_stages_and_records_itself(method_runs):
    for method, (run_dir, report) in method_runs.items():
        config = json.loads((run_dir / "config.json").read_text())
        assert config["method"] == method and report["method"] == method
        steps = [(m["stage"], m["step"]) for m in _metrics(run_dir)]
        weights = torch.load(run_dir / "last.pt", weights_only=True)
        if method.startswith("sourcesep"):
            assert steps == [(1, 1), (1, 2), (2, 1)] and report["head"] == "t" and report["stage"] == 2
            assert weights["model_config"]["two_branch"] and "ssh.0.weight" in weights["model"]
        else:  # one stage of iters1 + iters2 steps on a single-head DeepLabv3
            assert steps == [(1, 1), (1, 2), (1, 3)] and report["head"] == "t" and report["stage"] == 1
            assert not weights["model_config"]["two_branch"]
            assert not any(k.startswith(("phantom_classifier", "ssh")) for k in weights["model"])
            assert not (run_dir / "stage2.pt").exists()
        assert report["dataset"]["samples"] == 8 and 0 <= report["miou"] <= 1
        assert report["budget"] == "steps" == config["budget"]


def test_methods_log_their_losses_terms(method_runs):
    first = {m: _metrics(d)[0] for m, (d, _) in method_runs.items()}
    assert {"ce_ss", "ce_t", "ce_p"} <= first["sourcesep-cm"].keys()
    assert {"ce_t", "ce_p"} <= first["mixup"].keys()
    assert "ce_p" not in first["deeplabv3"] and "ce_p" not in first["cutmix"]
    config = json.loads((method_runs["sourcesep-cm"][0] / "config.json").read_text())
    assert (config["alpha"], config["gamma"], config["gamma_rule"]) == (1.0, 3.0, "thres")


def test_no_denoise_stops_after_stage_1_and_predicts_with_s_ss(shared_shards, tmp_path):
    report = run(TrainConfig(shards=str(shared_shards), out=str(tmp_path), name="no-dn", denoise=False, **TINY))
    assert report["stage"] == 1 and report["head"] == "ss"
    assert [m["stage"] for m in _metrics(tmp_path / "no-dn")] == [1, 1]
    assert json.loads((tmp_path / "no-dn" / "config.json").read_text())["denoise"] is False


def test_mixed_option_trains_on_another_shard_dir_and_records_its_strategy(shared_shards, tmp_path):
    mixed = write_shard_dir(tmp_path / "mixed-random", "mixed", [8], seed=5)
    manifest = json.loads((mixed / "manifest.json").read_text())
    manifest["generation"] = {"command": "mix", "strategy": "random", "delta": "0.6"}
    (mixed / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(trainer_cli, [
        "run", "--shards", str(shared_shards), "--mixed", str(mixed), "--out", str(tmp_path), "--name", "random",
        "--backbone", "mobilenet_v3_large", "--crop", "32", "--batch-size", "4", "--iters1", "1", "--no-denoise",
        "--workers", "0", "--device", "cpu", "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "random" / "config.json").read_text())
    assert (config["mixed"], config["mixed_strategy"], config["mixed_delta"]) == (str(mixed), "random", "0.6")
    assert f"in {mixed}" in result.output  # stage 1 read it


def test_cli_refuses_an_option_the_method_does_not_use(shared_shards, tmp_path):
    result = CliRunner().invoke(trainer_cli, ["run", "--shards", str(shared_shards), "--method", "mixup",
                                              "--gamma", "3", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code != 0 and "gamma: only sourcesep-cm pairs by co-occurrence, not mixup" in result.output
    result = CliRunner().invoke(trainer_cli, ["run", "--shards", str(shared_shards), "--method", "sourcesep-cm",
                                              "--gamma", "many", "--quiet"])
    assert result.exit_code != 0 and "expected a number or inf" in result.output


def test_online_mixing_resumes_to_the_same_weights(shared_shards, tmp_path):
    """A resumed run redoes the batches after its checkpoint with the same mixing draws."""
    base = dict(TINY, method="sourcesep-cm", iters1=3, iters2=0, checkpoint_every=1)
    run(TrainConfig(shards=str(shared_shards), out=str(tmp_path), name="whole", **base))
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    cut = TrainConfig(shards=str(shared_shards), out=str(tmp_path), name="cut", **base)
    _train_to_step(cut, 2)  # killed right after the step-2 checkpoint
    run(cut.replace(resume=True))
    resumed = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def _train_to_step(config: TrainConfig, step: int) -> None:
    """Run ``config`` but stop right after the checkpoint of optimizer step ``step``."""
    import trainer.train as train_module

    save = train_module.save_checkpoint

    class Stop(Exception):
        pass

    def save_then_stop(r, model, s, stage_done):
        save(r, model, s, stage_done)
        if s.position.step == step:
            raise Stop

    train_module.save_checkpoint = save_then_stop
    try:
        with pytest.raises(Stop):
            run(config)
    finally:
        train_module.save_checkpoint = save
