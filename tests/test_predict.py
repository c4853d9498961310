"""trainer predict as users run it (issue 23): any file name, folders, one output per input,
image bombs refused from their header, one failing file among many, overlays, sliding windows."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from blendgen.datasets.files import DatasetError
from cli import trainer as trainer_cli
from trainer import checkpoint as ckpt_io
from trainer.model import ModelConfig, build_model
from trainer.predict import (PredictConfig, Predictor, PseudoLabelConfig, predict_images, tile_starts,
                             write_pseudo_labels)

from conftest import TINY_CLASSES

TRAINER = str(Path(sys.executable).with_name("trainer"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny network saved as a trainer checkpoint: predictions need weights, not skill."""
    torch.manual_seed(0)
    config = ModelConfig(num_classes=TINY_CLASSES.num_classes, backbone="mobilenet_v3_large")
    model = build_model(config)
    path = tmp_path_factory.mktemp("ckpt") / "stage2.pt"
    ckpt_io.save(path, {"config": {}, "model_config": asdict(config), "classes": TINY_CLASSES.to_json(), "stage": 2,
                        "model": model.state_dict()})
    return path


def photo(path: Path, h: int = 40, w: int = 52, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    with open(path, "wb") as f:  # any name: Python writes it, not OpenCV
        f.write(cv2.imencode(".jpg", rgb)[1].tobytes())
    return path


def bomb(path: Path, w: int = 30000, h: int = 30000) -> Path:
    """A 16x16 JPEG whose frame header claims w x h: a few hundred bytes that decode to gigabytes."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 7], data[sof + 7:sof + 9] = h.to_bytes(2, "big"), w.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def predict(checkpoint: Path, *args: str):
    return CliRunner().invoke(trainer_cli, ["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--quiet",
                                            *args])


# 1. a file name that is not UTF-8 -----------------------------------------------------------------
def test_a_latin1_file_name_is_predicted_and_keeps_its_name(checkpoint, tmp_path):
    folder = os.fsencode(tmp_path / "in")
    os.mkdir(folder)
    name = os.path.join(folder, b"caf\xe9.jpg")
    try:
        photo(Path(os.fsdecode(name)))
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    out = os.fsencode(tmp_path / "out")
    # A subprocess: before the fix OpenCV crashed the interpreter (SIGSEGV) on this name.
    for args in ([name], [folder]):
        result = subprocess.run([TRAINER, "predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--quiet",
                                 "--out", out, *args, "--overwrite"], capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert os.listdir(out) == [b"caf\xe9.png"]
        assert Image.open(os.fsdecode(os.path.join(out, b"caf\xe9.png"))).size == (52, 40)


# 2. two inputs, one output ---------------------------------------------------------------------------
def test_two_inputs_that_would_write_one_prediction_are_refused_before_any_work(checkpoint, tmp_path):
    a, b = photo(tmp_path / "a" / "x.jpg"), photo(tmp_path / "b" / "x.jpg", seed=1)
    result = predict(checkpoint, str(a), str(b), "--out", str(tmp_path / "p"))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"Error: images: {a} and {b} would both write {tmp_path / 'p' / 'x.png'}; "
                     "predict them into separate --out folders"]
    assert not (tmp_path / "p").exists() or not list((tmp_path / "p").iterdir())
    # x.jpg and x.png of one folder collide too
    photo(tmp_path / "c" / "x.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c" / "x.png")
    assert "would both write" in predict(checkpoint, str(tmp_path / "c"), "--out", str(tmp_path / "q")).output


# 3. image bombs, and one failing file among others ---------------------------------------------------
def test_an_image_bomb_is_refused_from_its_header_and_the_others_go_on(checkpoint, tmp_path):
    folder = tmp_path / "uploads"
    photo(folder / "good.jpg")
    bomb(folder / "bomb.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    result = predict(checkpoint, str(folder), "--out", str(tmp_path / "p"), "--max-pixels", "100000000")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert f"{folder / 'bomb.jpg'}: image of 900 Mpx, over the limit of 100 Mpx; not decoded (--max-pixels to allow it)" \
        in lines
    assert any(line.startswith(f"{folder / 'broken.png'}: unreadable image (") for line in lines)
    assert lines[-1] == "2 of 3 image(s) failed (listed above)"
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["good.png"]
    # the default limit is 100 Mpx; a smaller one refuses an honest photo by its size
    assert PredictConfig(checkpoint="c", images=("x",), out="o").max_pixels == 100_000_000
    result = predict(checkpoint, str(folder / "good.jpg"), "--out", str(tmp_path / "q"), "--max-pixels", "1000")
    assert f"{folder / 'good.jpg'}: image of 52x40 = 0 Mpx" in result.output and result.exit_code == 1


def test_pseudo_label_refuses_an_image_bomb_in_one_line(checkpoint, tmp_path):
    (tmp_path / "images").mkdir()
    bomb(tmp_path / "images" / "a.jpg")
    with pytest.raises(DatasetError, match=r"a\.jpg: image of 900 Mpx, over the limit of 100 Mpx; not decoded"):
        write_pseudo_labels(PseudoLabelConfig(checkpoint=str(checkpoint), images=str(tmp_path / "images"),
                                              out=str(tmp_path / "pseudo"), device="cpu"), progress=False)


# 4. folders --------------------------------------------------------------------------------------------
def test_folders_are_walked_mirrored_resumed_and_overlaid(checkpoint, tmp_path):
    folder = tmp_path / "photos"
    photo(folder / "top.jpg")
    photo(folder / "trip" / "day1" / "beach.JPEG", 30, 20)
    photo(folder / ".thumbs" / "top.jpg")  # dot folder: skipped
    photo(folder / ".hidden.jpg")  # dot file: skipped
    (folder / "notes.txt").write_text("not an image")
    out = folder / "predictions"  # inside the folder: never taken for input
    result = predict(checkpoint, str(folder), "--out", str(out), "--overlay", "--opacity", "0.6")
    assert result.exit_code == 0, result.output
    assert "wrote 2 prediction(s)" in result.output
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["top.overlay.jpg", "top.png", "trip/day1/beach.overlay.jpg", "trip/day1/beach.png"]
    assert Image.open(out / "trip" / "day1" / "beach.png").size == (20, 30)
    assert Image.open(out / "top.overlay.jpg").size == (52, 40)
    assert not list(out.rglob(".*"))  # no temporaries left

    before = (out / "top.png").stat().st_mtime_ns
    again = predict(checkpoint, str(folder), "--out", str(out), "--overlay")
    assert again.exit_code == 0 and "wrote 0 prediction(s)" in again.output and "2 already there" in again.output
    assert (out / "top.png").stat().st_mtime_ns == before
    redo = predict(checkpoint, str(folder), "--out", str(out), "--overwrite")
    assert redo.exit_code == 0 and "wrote 2 prediction(s)" in redo.output


def test_overlay_colours_objects_and_leaves_background_alone():
    from trainer.predict import overlay

    rgb = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[0, 1], [2, 0]], np.uint8)
    mixed = overlay(rgb, label, TINY_CLASSES, 0.5)
    assert (mixed[0, 0] == 100).all() and (mixed[1, 1] == 100).all()
    np.testing.assert_array_equal(mixed[0, 1], np.round(0.5 * 100 + 0.5 * TINY_CLASSES.palette[1]).astype(np.uint8))


# sliding windows (big photos) ---------------------------------------------------------------------
def test_tile_starts_cover_every_pixel_and_end_flush():
    assert tile_starts(50, 64, 48) == [0]
    assert tile_starts(100, 64, 48) == [0, 36]
    assert tile_starts(160, 64, 48) == [0, 48, 96]
    for length in range(64, 300, 7):
        starts = tile_starts(length, 64, 48)
        assert starts[-1] == length - 64 and all(b - a <= 48 for a, b in zip(starts, starts[1:]))


def test_sliding_window_is_the_argmax_of_the_averaged_window_logits(checkpoint):
    predictor = Predictor(str(checkpoint), "cpu", tile=48, stride=32)
    rgb = np.random.default_rng(3).integers(0, 256, (100, 90, 3), dtype=np.uint8)
    got = predictor(rgb)
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    total = torch.zeros((TINY_CLASSES.num_classes, 100, 90))
    count = torch.zeros((100, 90))
    with torch.inference_mode():
        for y in tile_starts(100, 48, 32):
            for x0 in tile_starts(90, 48, 32):
                total[:, y:y + 48, x0:x0 + 48] += predictor.logits(x[:, y:y + 48, x0:x0 + 48])
                count[y:y + 48, x0:x0 + 48] += 1
    want = (total / count).argmax(0).numpy()
    assert count.min() >= 1
    assert (got == want).mean() > 0.999  # float sums in another order may flip an exact tie
    # an image within one tile is predicted whole, as without tiling
    small = rgb[:40, :45]
    np.testing.assert_array_equal(predictor(small), Predictor(str(checkpoint), "cpu", tile=0)(small))


def test_predict_images_returns_counts_and_failures(checkpoint, tmp_path):
    photo(tmp_path / "in" / "a.jpg")
    bomb(tmp_path / "in" / "b.jpg", 20000, 20000)
    said = []
    done = predict_images(PredictConfig(checkpoint=str(checkpoint), images=(str(tmp_path / "in"),),
                                        out=str(tmp_path / "out"), device="cpu"), progress=False, say=said.append)
    assert (done["images"], done["written"], done["skipped"]) == (2, 1, 0)
    assert done["failed"] == said and len(said) == 1 and "400 Mpx" in said[0]
