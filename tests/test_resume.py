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
    from trainer.train import check_resumable

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
