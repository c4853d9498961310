"""Issue 21: SyncBatchNorm under DDP, TensorBoard event files, --compile and best.pt."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cli import trainer as trainer_cli
from trainer.config import TrainConfig
from trainer.distributed import Dist
from trainer.model import ModelConfig, build_model
from trainer.resume import check_resumable
from trainer.train import run, sync_batchnorm

TINY = dict(backbone="mobilenet_v3_large", crop=32, batch_size=4, workers=0, device="cpu", log_every=1,
            checkpoint_every=1, progress=False, threads=1)


def batchnorms(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# -- SyncBatchNorm ----------------------------------------------------------------------------------
def test_sync_batchnorm_converts_only_several_cuda_processes_and_keeps_the_state_dict():
    # This torch's SyncBatchNorm raises on CPU tensors in training, so a real 2-rank run needs
    # two GPUs (bench/device_check.py, step sync_bn); here the conversion itself is checked.
    config = ModelConfig(num_classes=4, backbone="resnet18", output_stride=16)
    torch.manual_seed(0)
    plain = build_model(config)
    torch.manual_seed(0)
    model = build_model(config)
    cuda2 = Dist(rank=0, world_size=2, local_rank=0, device=torch.device("cuda"))
    converted = sync_batchnorm(model, True, cuda2)
    kinds = batchnorms(converted)
    assert kinds and set(kinds) == {nn.SyncBatchNorm}
    assert converted.ssh is not None  # the two-branch attributes survive the conversion
    state = converted.state_dict()
    assert list(state) == list(plain.state_dict())  # same names, same order
    fresh = build_model(config)
    assert not fresh.load_state_dict(state, strict=True).missing_keys
    for key, tensor in plain.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], tensor), key
    # Off, one process, or CPU ranks: the model is left as it was (single runs bit-identical).
    for enabled, d in [(False, cuda2), (True, Dist(0, 1, 0, torch.device("cuda"))), (True, Dist(0, 2, 0, torch.device("cpu")))]:
        same = build_model(config)
        assert sync_batchnorm(same, enabled, d) is same and nn.SyncBatchNorm not in batchnorms(same)


def test_sync_bn_option_and_runs_from_before_it(tmp_path):
    assert TrainConfig(shards="out").sync_bn is True
    result = CliRunner().invoke(trainer_cli, ["run", "--help"])
    assert "--no-sync-bn" in result.output and "--compile" in result.output
    # A run recorded before the option had per-process BatchNorm: its resume keeps it.
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"")
    recorded = TrainConfig(shards="out", name="old", iters1=5, iters2=1).to_dict()
    del recorded["sync_bn"], recorded["compile"]
    (run_dir / "config.json").write_text(json.dumps(recorded))
    assert check_resumable(TrainConfig(shards="out", name="old", iters1=5, iters2=1, resume=True), run_dir).sync_bn is False


# -- event files and best.pt ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, shared_shards):
    """3 + 2 steps, a validation after every step: five val points over both stages."""
    out = tmp_path_factory.mktemp("runs")
    report = run(TrainConfig(shards=str(shared_shards), out=str(out), name="ev", iters1=3, iters2=2, eval_every=1,
                             **TINY))
    return out / "ev", report


def read_events(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_hold_the_scalars_of_metrics_jsonl(evaluated_run):
    run_dir, _ = evaluated_run
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    events = read_events(run_dir)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    offset = {1: 0, 2: 3}  # stage 2's steps follow stage 1's three
    want: dict[str, list] = {}
    for m in lines:
        for key, value in m.items():
            if key in ("stage", "step", "epoch", "time") or isinstance(value, str):
                continue
            tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            want.setdefault(tag, []).append((offset[m["stage"]] + m["step"], value))
    assert {"train/loss", "train/lr", "train/samples_per_s", "train/data_wait_s", "train/ce_ss", "train/ppa",
            "val/miou", "val/miou_t", "val/miou_ss"} <= set(events)
    assert set(events) == set(want)
    for tag, points in want.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag  # each step once, in order
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-7), tag
    assert [s for s, _ in events["train/loss"]] == [1, 2, 3, 4, 5]
    assert [s for s, _ in events["val/miou_t"]] == [1, 2, 3, 4, 5]


def test_best_checkpoint_holds_the_best_validation_and_trainer_eval_takes_it(evaluated_run, shared_shards, tmp_path):
    run_dir, report = evaluated_run
    val = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in val if "val_miou" in m]
    assert [(m["stage"], m["step"], m["val_head"]) for m in val] == [(1, 1, "ss"), (1, 2, "ss"), (1, 3, "ss"),
                                                                     (2, 1, "t"), (2, 2, "t")]
    top = max(val, key=lambda m: m["val_miou"])  # max keeps the first of equals, as the run does
    want = {"stage": top["stage"], "step": top["step"], "head": top["val_head"], "miou": top["val_miou"]}
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["best"] == report["best"] == {"checkpoint": "best.pt", **want}
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["best"] == want and best["stage"] == want["stage"]
    last = torch.load(run_dir / "last.pt", weights_only=True)  # the final evaluation comes after its last save
    assert last["best"] == want or (want["stage"], want["step"]) == (2, 2)
    result = CliRunner().invoke(trainer_cli, ["eval", "--checkpoint", str(run_dir / "best.pt"), "--shards",
                                              str(shared_shards), "--workers", "0", "--device", "cpu", "--quiet",
                                              "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert evaluated["head"] == want["head"]
    assert evaluated["miou"] == pytest.approx(want["miou"], abs=2e-6)  # the weights of that validation


# -- --compile --------------------------------------------------------------------------------------
def eager_compile(calls: list):
    """nn.Module.compile through dynamo with the eager backend: the trainer's wiring, checked
    without minutes of inductor's C++ compilation on a small CPU."""
    real = nn.Module.compile

    def compile_(self, *args, **kwargs):
        calls.append(type(self).__name__)
        real(self, backend="eager")

    return compile_


def test_compile_traces_the_model_and_checkpoints_keep_plain_keys(shared_shards, tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    calls: list = []
    monkeypatch.setattr(nn.Module, "compile", eager_compile(calls))
    counters.clear()
    run(TrainConfig(shards=str(shared_shards), out=str(tmp_path), name="c", iters1=1, iters2=1, compile=True, **TINY))
    assert calls == ["SourceSeparationNet"]
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did trace the forward
    plain = build_model(ModelConfig(num_classes=4, backbone="mobilenet_v3_large", output_stride=16)).state_dict()
    for name in ("stage1.pt", "stage2.pt", "last.pt", "best.pt"):
        state = torch.load(tmp_path / "c" / name, weights_only=True)["model"]
        assert list(state) == list(plain), name  # no _orig_mod. prefixes
    assert json.loads((tmp_path / "c" / "config.json").read_text())["compile"] is True


def test_compile_failure_and_missing_compiler_are_one_line(shared_shards, tmp_path, monkeypatch):
    real = nn.Module.compile

    def broken_backend(gm, example_inputs):
        raise RuntimeError("cc1plus: fatal error: no space left on device")

    monkeypatch.setattr(nn.Module, "compile", lambda self: real(self, backend=broken_backend))
    config = TrainConfig(shards=str(shared_shards), out=str(tmp_path), name="b", iters1=1, iters2=0, compile=True,
                         **TINY)
    with pytest.raises(ValueError) as info:
        run(config)
    message = str(info.value)
    assert message.startswith("compile: torch.compile failed on this machine (") and "no space left" in message
    assert message.endswith("run without --compile") and "\n" not in message

    monkeypatch.setenv("CXX", "no-such-compiler++")
    with pytest.raises(ValueError, match=r"^compile: inductor's CPU backend compiles C\+\+, and no "
                                         r"'no-such-compiler\+\+' is on PATH"):
        run(config.replace(name="nocxx"))
    assert not (tmp_path / "nocxx").exists()  # refused before anything was written


def test_resume_repairs_a_best_checkpoint_a_kill_left_behind(tmp_path):
    # last.pt is written before best.pt when a validation improves: a kill between the two
    # leaves last.pt with the new record and its weights, and best.pt with the old ones.
    from types import SimpleNamespace

    from trainer import checkpoint as ckpt_io
    from trainer.resume import reconcile_best

    r = SimpleNamespace(path=lambda name: tmp_path / name, dist=Dist(0, 1, 0, torch.device("cpu")))
    meta = {"config": {}, "model_config": {}, "classes": {"names": ["a"]}}
    old = {"stage": 1, "step": 2, "head": "ss", "miou": 0.25}
    new = {"stage": 1, "step": 4, "head": "ss", "miou": 0.5}
    ckpt_io.save(tmp_path / "best.pt", {**meta, "stage": 1, "model": {"w": torch.zeros(2)}, "best": old})
    last = {**meta, "stage": 1, "model": {"w": torch.ones(2)}, "best": new, "stage_done": False,
            "position": {"stage": 1, "step": 4, "epoch": 0, "batch": 4}}
    assert reconcile_best(r, last) == new
    repaired = ckpt_io.load(tmp_path / "best.pt")
    assert repaired["best"] == new and torch.equal(repaired["model"]["w"], torch.ones(2))
    # Agreeing files are left alone; a later checkpoint keeps the record it holds.
    assert reconcile_best(r, {**last, "position": {"stage": 1, "step": 6, "epoch": 0, "batch": 6}}) == new
    # The final evaluation of a finished run writes best.pt after last.pt's last save: kept.
    final = {"stage": 2, "step": 3, "head": "t", "miou": 0.75}
    ckpt_io.save(tmp_path / "best.pt", {**meta, "stage": 2, "model": {"w": torch.ones(2)}, "best": final})
    done = {**last, "stage": 2, "stage_done": True, "position": {"stage": 2, "step": 3, "epoch": 0, "batch": 3}}
    assert reconcile_best(r, done) == final
