"""``blendgen mix --max-samples N``: a seeded subsample of the plan, recorded, deterministic,
and resumable after kill -9 to the same files as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from blendgen.generation.clusters import ClusterIndex
from blendgen.generation.plan import make_plan, row_key
from blendgen.shards.schema import ShardError, verify_shard
from cli import blendgen
from test_mix import BLENDGEN, all_samples, file_digests, make_clusters, run_mix


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return make_clusters(tmp_path_factory.mktemp("subsample"))


def test_subsample_is_a_seeded_subset_of_the_plan_in_plan_order():
    rng = np.random.default_rng(0)
    presence = rng.random((40, 6)) < 0.4
    full = make_plan(presence, seed=3)
    part = make_plan(presence, seed=3, max_samples=50)
    assert len(part) == 50 and part.planned == len(full) and part.max_samples == 50
    positions = [int(np.flatnonzero(full.rows == row)[0]) for row in part.rows]  # rows are unique (k, j, a)
    assert positions == sorted(positions)
    assert np.array_equal(make_plan(presence, seed=3, max_samples=50).rows, part.rows)
    assert not np.array_equal(make_plan(presence, seed=4, max_samples=50).rows["dominant"], part.rows["dominant"])
    assert part.summary()["max_samples"] == 50 and part.summary()["planned_rows"] == len(full)
    assert "max_samples" not in full.summary()
    whole = make_plan(presence, seed=3, max_samples=10 ** 6)  # larger than the plan: all of it
    assert np.array_equal(whole.rows, full.rows) and whole.planned == len(full)
    with pytest.raises(ValueError, match="^max_samples:"):
        make_plan(presence, max_samples=0)


def test_mix_max_samples_writes_and_records_the_subsample(out, tmp_path):
    full_result, full_plan = run_mix(out, tmp_path / "full", shard_size=4)
    result, plan = run_mix(out, tmp_path / "sub", shard_size=4, max_samples=9)
    assert result.samples == len(plan) == 9 < len(full_plan)
    manifest = json.loads((tmp_path / "sub" / "manifest.json").read_text())
    assert manifest["num_samples"] == 9
    assert manifest["plan"]["max_samples"] == 9 and manifest["plan"]["planned_rows"] == len(full_plan)
    assert manifest["generation"]["max_samples"] == 9
    assert "max_samples" not in json.loads((tmp_path / "full" / "manifest.json").read_text())["generation"]
    with h5py.File(tmp_path / "sub" / "shard-00000.h5", "r") as f:
        assert f.attrs["generation.max_samples"] == 9
    ids = [str(i) for i in ClusterIndex.load(out).ids]
    full_keys = [row_key(r, ids) for r in full_plan.rows]
    keys = [s.key for s in all_samples(tmp_path / "sub")]
    assert set(keys) <= set(full_keys) and keys == [k for k in full_keys if k in set(keys)]
    by_key = {s.key: s for s in all_samples(tmp_path / "full")}
    for s in all_samples(tmp_path / "sub"):  # the very samples of the full run
        assert np.array_equal(s.image, by_key[s.key].image) and s.delta == by_key[s.key].delta
    run_mix(out, tmp_path / "again", shard_size=4, max_samples=9)
    assert file_digests(tmp_path / "again") == file_digests(tmp_path / "sub")
    with pytest.raises(ShardError, match="written with other parameters"):
        run_mix(out, tmp_path / "sub", shard_size=4, max_samples=8)


def test_cli_reports_the_subsample(out, tmp_path):
    result = CliRunner().invoke(blendgen, ["mix", "--out", str(out), "--dest", str(tmp_path / "m"), "--quiet",
                                           "--max-samples", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("plan: 5 samples, a seeded subsample of ")
    bad = CliRunner().invoke(blendgen, ["mix", "--out", str(out), "--max-samples", "0"])
    assert bad.exit_code == 2 and "Invalid value for '--max-samples'" in bad.output


def test_killed_subsampled_run_resumes_to_the_uninterrupted_result(tmp_path):
    rng = np.random.default_rng(1)
    images = {f"k{i:02d}": ((int(rng.integers(100, 160)), int(rng.integers(100, 160))),
                            sorted(set(rng.choice([1, 2, 3, 7, 12, 15], size=int(rng.integers(1, 4))).tolist())))
              for i in range(16)}
    out = make_clusters(tmp_path, images)
    dest = tmp_path / "killed"
    cmd = [BLENDGEN, "mix", "--out", str(out), "--dest", str(dest), "--shard-size", "3", "--max-samples", "30",
           "--seed", "5", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(dest.glob("shard-*.h5")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (dest / "manifest.json").exists()
    for p in dest.glob("shard-*.h5"):
        verify_shard(p)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "kept from an earlier run" in rerun.stdout and " 0 kept" not in rerun.stdout
    run_mix(out, tmp_path / "clean", shard_size=3, max_samples=30, seed=5)
    assert file_digests(dest) == file_digests(tmp_path / "clean")
    assert json.loads((dest / "manifest.json").read_text())["num_samples"] == 30
