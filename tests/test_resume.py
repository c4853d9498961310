"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from trainer import checkpoint as ckpt_io


def command(shards, out, name: str, *extra: str) -> list[str]:
    # Two loader workers, accumulation over 2 batches and 5 steps of 2 x 4 samples over a
    # 24-sample epoch: the resumed position is inside an epoch and the run crosses into the next.
    return [sys.executable, "-m", "trainer", "run", "--shards", str(shards), "--out", str(out), "--name", name,
            "--backbone", "mobilenet_v3_large", "--crop", "32", "--batch-size", "4", "--accum", "2",
            "--iters1", "5", "--iters2", "1", "--workers", "2", "--device", "cpu", "--seed", "3",
            "--checkpoint-every", "1", "--log-every", "1", "--quiet", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # bitwise comparisons need equal thread counts; 1 is fastest on 2 busy cores


def test_killed_run_resumes_to_the_same_weights(shared_shards, tmp_path):
    reference = subprocess.run(command(shared_shards, tmp_path, "reference"), capture_output=True, text=True, env=ENV)
    assert reference.returncode == 0, reference.stderr

    victim = subprocess.Popen(command(shared_shards, tmp_path, "killed"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=ENV)
    last = tmp_path / "killed" / "last.pt"
    while not last.exists() and victim.poll() is None:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "report.json").exists()
    killed_at = ckpt_io.load(last)["position"]
    assert (killed_at["stage"], killed_at["step"]) < (2, 1)

    resumed = subprocess.run(command(shared_shards, tmp_path, "killed", "--resume"), capture_output=True, text=True,
                             env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path / 'killed'} at stage {killed_at['stage']}" in resumed.stderr

    want = torch.load(tmp_path / "reference" / "last.pt", weights_only=True)
    got = torch.load(last, weights_only=True)
    assert got["position"] == want["position"] == {"stage": 2, "step": 1, "epoch": 0, "batch": 2}
    for key, tensor in want["model"].items():
        assert torch.equal(got["model"][key], tensor), key  # bitwise: same kernels, threads, data, RNG
    steps = lambda name: [(m["stage"], m["step"], "val_miou" in m)  # noqa: E731
                          for m in map(json.loads, (tmp_path / name / "metrics.jsonl").open())]
    assert steps("killed") == steps("reference") == [(1, 1, False), (1, 2, False), (1, 3, False), (1, 4, False),
                                                     (1, 5, False), (1, 5, True), (2, 1, False), (2, 1, True)]
    report = lambda name: json.loads((tmp_path / name / "report.json").read_text())["miou"]  # noqa: E731
    assert report("killed") == report("reference")


def test_a_run_recorded_with_units_of_32_resumes_with_them(tmp_path):
    # Units of one sample became the default after runs had recorded unit=32 (issue 18): resuming
    # such a run (trainer run has no --unit) goes on with its own order, not the new default's.
    from trainer.config import TrainConfig
    from trainer.resume import check_resumable

    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"")
    saved = TrainConfig(shards="out", name="old", unit=32, iters1=5, iters2=1)
    (run_dir / "config.json").write_text(json.dumps(saved.to_dict()))
    resumed = check_resumable(TrainConfig(shards="out", name="old", iters1=5, iters2=1, resume=True), run_dir)
    assert resumed.unit == 32 and resumed.shuffle_buffer == 256
    assert TrainConfig(shards="out").unit == 1
    # An explicit other layout is still a change the resume refuses.
    with pytest.raises(ValueError, match="unit"):
        check_resumable(TrainConfig(shards="out", name="old", iters1=5, iters2=1, unit=8, resume=True), run_dir)


def test_total_time_counts_every_process_of_a_resumed_run(shared_shards, tmp_path):
    # Issue 23: report.json's total_time_s counted only the last process. A finished run resumed
    # evaluates again: two processes, each recorded with its share.
    from click.testing import CliRunner

    from cli import trainer as trainer_cli

    args = ["run", "--shards", str(shared_shards), "--out", str(tmp_path), "--name", "r", "--backbone",
            "mobilenet_v3_large", "--crop", "32", "--batch-size", "4", "--iters1", "1", "--iters2", "1",
            "--workers", "0", "--device", "cpu", "--threads", "1", "--quiet"]
    assert CliRunner().invoke(trainer_cli, args).exit_code == 0
    first = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "segments" not in first
    saved = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["segments"]
    assert len(saved) == 1 and saved[0]["resumed_at"] is None and 0 < saved[0]["seconds"] <= first["total_time_s"]

    result = CliRunner().invoke(trainer_cli, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    segments = report["segments"]
    assert [s["resumed_at"] for s in segments] == [None, {"stage": 2, "step": 1, "epoch": 0, "batch": 1}]
    assert segments[0] == saved[0]
    assert report["total_time_s"] == pytest.approx(sum(s["seconds"] for s in segments), abs=0.02)
    assert report["total_time_s"] > segments[1]["seconds"]


def test_a_pickled_checkpoint_is_refused_in_whole_words(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"format": ckpt_io.FORMAT, "payload": _Pickled()}, path)
    with pytest.raises(ckpt_io.CheckpointError) as info:
        ckpt_io.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a loadable checkpoint (not a PyTorch file of tensors: Unsupported global")
    assert message.endswith("was not an allowed global by default; pickled objects are never loaded, they could run code)")
    assert "\n" not in message and "weights_only" not in message and "add_safe_globals" not in message


class _Pickled:
    """Any class: torch.save pickles it, and a weights-only load must refuse it."""


def test_a_resumed_run_keeps_its_best_checkpoint_and_writes_each_event_once(shared_shards, tmp_path):
    # Issue 21: validations every 2 steps, last.pt every 2; the run is killed after it logged
    # step 3, i.e. after its events passed the checkpoint it resumes from.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    extra = ("--eval-every", "2", "--checkpoint-every", "2")
    reference = subprocess.run(command(shared_shards, tmp_path, "reference", *extra), capture_output=True, text=True,
                               env=ENV)
    assert reference.returncode == 0, reference.stderr
    metrics = tmp_path / "killed" / "metrics.jsonl"
    victim = subprocess.Popen(command(shared_shards, tmp_path, "killed", *extra), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=ENV)
    while victim.poll() is None and not (metrics.exists() and any(
            json.loads(line)["step"] >= 3 for line in metrics.read_text().splitlines() if line.endswith("}"))):
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = ckpt_io.load(tmp_path / "killed" / "last.pt")["position"]
    assert (1, 2) <= (killed_at["stage"], killed_at["step"]) < (2, 1)
    assert torch.load(tmp_path / "killed" / "best.pt", weights_only=True)["best"]["step"] >= 2

    resumed = subprocess.run(command(shared_shards, tmp_path, "killed", "--resume", *extra), capture_output=True,
                             text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr

    def events(name: str) -> dict:
        acc = EventAccumulator(str(tmp_path / name))
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    want, got = events("reference"), events("killed")
    assert set(got) == set(want) and "val/miou" in got
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag  # each step once
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4, 5, 6] and [s for s, _ in got["val/miou"]] == [2, 4, 5, 6]
    assert got["train/loss"] == want["train/loss"]  # the same losses, bitwise
    best_want = torch.load(tmp_path / "reference" / "best.pt", weights_only=True)
    best_got = torch.load(tmp_path / "killed" / "best.pt", weights_only=True)
    assert best_got["best"] == best_want["best"]
    for key, tensor in best_want["model"].items():
        assert torch.equal(best_got["model"][key], tensor), key
    report = lambda name: json.loads((tmp_path / name / "report.json").read_text())["best"]  # noqa: E731
    assert report("killed") == report("reference") == {"checkpoint": "best.pt", **best_want["best"]}
