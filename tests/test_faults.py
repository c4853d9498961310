"""Bad input and failing disks end in one line naming what is wrong, with nothing half-written
left behind: --out that is a file, a bad --init, a checkpoint write that fails, the temporaries a
killed run left."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from click.testing import CliRunner

import trainer.checkpoint as ckpt_io
from cli import blendgen as blendgen_cli
from cli import trainer as trainer_cli

from voc_fixture import label_with_classes, write_voc

TINY = ["--backbone", "mobilenet_v3_large", "--crop", "32", "--batch-size", "4", "--iters1", "1", "--iters2", "1",
        "--workers", "0", "--device", "cpu", "--threads", "1", "--quiet"]


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_out_that_is_a_file_is_one_line(tmp_path, shared_shards):
    voc_root = write_voc(tmp_path / "voc", {"a": label_with_classes([1, 15]), "b": label_with_classes([15])})
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = one_line_error(CliRunner().invoke(trainer_cli, ["run", "--shards", str(shared_shards), "--out", str(blocker),
                                                           "--name", "x", *TINY]))
    assert str(blocker / "x") in line and "cannot make the directory" in line
    line = one_line_error(CliRunner().invoke(blendgen_cli, ["build-clusters", "--dataset", "voc", "--root",
                                                            str(voc_root), "--out", str(blocker), "--quiet"]))
    assert str(blocker) in line and "cannot make the directory" in line


@pytest.mark.parametrize("content", [os.urandom(4096), b"just some text\n", None], ids=["random", "text", "tensor"])
def test_bad_init_is_one_line_and_leaves_no_run_behind(tmp_path, shared_shards, content):
    init = tmp_path / "init.pt"
    if content is None:
        torch.save(torch.zeros(3), init)  # loadable, but a tensor, not a state dict
    else:
        init.write_bytes(content)
    line = one_line_error(CliRunner().invoke(trainer_cli, ["run", "--shards", str(shared_shards), "--out",
                                                           str(tmp_path / "runs"), "--name", "x", "--init", str(init),
                                                           *TINY]))
    assert line.startswith(f"Error: init: {init}") and "weights_only" not in line
    assert not (tmp_path / "runs" / "x").exists()


def test_failed_checkpoint_write_removes_its_temporary_and_names_the_good_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_io.save(path, {"model": {"w": torch.ones(2)}})
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # writes part of the file, then the disk is full
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:
            handle.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ckpt_io.CheckpointError, match=f"No space left on device.*the last good checkpoint is {path}"):
        ckpt_io.save(path, {"model": {"w": torch.zeros(2)}})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.equal(ckpt_io.load(path)["model"]["w"], torch.ones(2))  # the good one is untouched


def test_resume_removes_temporaries_of_killed_runs_only(tmp_path):
    dead = ckpt_io.temporary(tmp_path / "last.pt", 2 ** 22 + 12345)  # no such process
    alive = ckpt_io.temporary(tmp_path / "last.pt", os.getpid())  # this one is still writing
    for p in (dead, alive):
        p.write_bytes(b"half")
    assert ckpt_io.remove_stale_temporaries(tmp_path) == [dead]
    assert not dead.exists() and alive.exists()


def test_resumed_run_says_it_removed_a_stale_temporary(tmp_path, shared_shards):
    args = ["run", "--shards", str(shared_shards), "--out", str(tmp_path), "--name", "r", *TINY]
    assert CliRunner().invoke(trainer_cli, args).exit_code == 0
    stale = ckpt_io.temporary(tmp_path / "r" / "last.pt", 2 ** 22 + 54321)
    stale.write_bytes(b"x" * 1000)
    result = CliRunner().invoke(trainer_cli, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and f"removed {stale}" in result.output
    assert json.loads((tmp_path / "r" / "report.json").read_text())["miou"] >= 0


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_of_a_non_checkpoint_are_one_line(tmp_path, shared_shards, command):
    bad = tmp_path / "stage2.pt"
    bad.write_bytes(os.urandom(2048))
    args = (["eval", "--checkpoint", str(bad), "--shards", str(shared_shards), "--quiet"] if command == "eval" else
            ["predict", "--checkpoint", str(bad), "--out", str(tmp_path / "pred"), str(bad)])
    line = one_line_error(CliRunner().invoke(trainer_cli, args))
    assert f"{bad}: not a loadable checkpoint" in line and "weights_only" not in line


def test_an_id_listed_twice_is_one_line_naming_the_list_and_lines(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": label_with_classes([1]), "b": label_with_classes([15])})
    listing = root / "ImageSets" / "Segmentation" / "train.txt"
    listing.write_text("a\nb\n\na\n")
    line = one_line_error(CliRunner().invoke(blendgen_cli, ["build-clusters", "--dataset", "voc", "--root", str(root),
                                                            "--out", str(tmp_path / "out"), "--quiet"]))
    assert line == f"Error: {listing}: id 'a' is listed twice (lines 1 and 4)"
    assert not (tmp_path / "out").exists()
