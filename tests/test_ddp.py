"""``trainer run`` under torchrun: two real CPU processes (gloo) train as one."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blendgen.shards.directory import ShardDir

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_two_processes_agree_and_only_rank_zero_writes(shared_shards, tmp_path):
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "trainer", "run", "--shards", str(shared_shards),
           "--out", str(tmp_path), "--name", "ddp", "--backbone", "mobilenet_v3_large", "--crop", "32",
           "--batch-size", "2", "--iters1", "2", "--iters2", "1", "--workers", "0", "--device", "cpu",
           "--log-every", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    digests = dict(re.findall(r"\[rank (\d)\] final weights sha256 (\w+)", done.stdout))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    names = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert [n for n in names if not n.startswith("events.out.tfevents.")] == [
        "best.pt", "config.json", "curves.png", "last.pt", "metrics.jsonl", "report.json", "report.md", "stage1.pt",
        "stage2.pt"]
    assert len(names) == 10  # one TensorBoard event file, from rank 0
    # This torch's SyncBatchNorm runs on CUDA only (bench/device_check.py checks it on a GPU): CPU ranks say so once.
    assert done.stderr.count("sync_bn: this torch's SyncBatchNorm runs on CUDA only") == 1
    lines = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["stage"], m["step"], "val_miou" in m) for m in lines] == [(1, 1, False), (1, 2, False), (1, 2, True),
                                                                          (2, 1, False), (2, 1, True)]
    # Each step saw 2 processes x 2 samples; the evaluation covered every val sample once.
    last = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert last["position"] == {"stage": 2, "step": 1, "epoch": 0, "batch": 1}
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    labelled = sum(int((r.read(i).label != 255).sum()) for r in ShardDir.open(shared_shards / "val").readers()
                   for i in range(len(r)))
    assert report["pixels"] == labelled
