"""bench/device_check.sh, the prepared GPU check, rehearsed end to end on the CPU at toy sizes
(so whoever next has a GPU runs it unchanged), and its no-GPU notice."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["cuda_tests", "data", "step_time", "train_run", "eval", "compile", "compile_trainer", "sync_bn"]


def test_cpu_rehearsal_runs_every_step_and_records_its_figures(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "bench/device_check.sh", "--device", "cpu", "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert list(result["steps"]) == STEPS and all(s["status"] == "ok" for s in result["steps"].values())
    steps = result["steps"]
    assert steps["data"]["mixed_samples"] > 0 and set(steps["data"]["command_seconds"]) >= {"synth", "mix"}
    for setting in steps["step_time"]["settings"]:
        ss, dl = setting["sourcesep"], setting["deeplabv3"]
        # two DeepLabv3 heads and an SSH cost more work than one head, on the same encoder and batch
        assert ss["gflops_per_step"] > dl["gflops_per_step"] > 0
        assert setting["step_ratio"] == round(ss["step_s"] / dl["step_s"], 3)
    assert {s["output_stride"] for s in steps["step_time"]["settings"]} == {8, 16}
    assert 0 <= steps["train_run"]["data_wait_fraction"] < 1 and steps["train_run"]["stage1_step_s"] > 0
    assert steps["eval"]["clean_images_per_s"] > steps["eval"]["pgd2_images_per_s"] > 0
    assert "skipped" in steps["compile_trainer"] and "CUDA only" in steps["sync_bn"]["skipped"]
    assert (tmp_path / "device_check.log").read_text().count("== ") >= 2 * len(STEPS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the notice is for machines without a GPU")
def test_without_a_gpu_the_check_says_so_and_succeeds(tmp_path):
    done = subprocess.run(["bash", "bench/device_check.sh", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().startswith("device_check: no GPU visible")
    assert not (tmp_path / "device_check.json").exists()
