"""Real-photo use: evaluation at a fraction of the image size (--eval-scale, the photos-cpu
preset) and scripts/pipeline.sh on a CamVid-shaped set in VOC layout, made here: 11 street
classes whose id 0 (Sky) is a real class, 255 void, 'P'-mode label PNGs, train/val/test lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from blendgen.shards.directory import ShardDir
from cli import trainer as trainer_cli
from trainer.config import PRESETS, TrainConfig
from trainer.model import ModelConfig, build_model, scaled_forward
from trainer.transforms import normalize

REPO = Path(__file__).resolve().parents[1]
CAMVID = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
          "Bicyclist")


def street_photo(rng: np.random.Generator, h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Sky, buildings and road in bands, a few small objects, a void line: most classes in every image."""
    label = np.full((h, w), 1, np.uint8)  # Building
    label[: h // 4] = 0  # Sky
    label[h * 2 // 3:] = 3  # Road
    label[h * 2 // 3: h * 2 // 3 + 3] = 4  # Pavement
    for c in rng.choice(np.arange(2, 11), size=5, replace=False):
        y, x = int(rng.integers(h // 4, h - 8)), int(rng.integers(0, w - 8))
        label[y:y + 6, x:x + 6] = c
    colours = np.linspace(20, 235, 33).reshape(11, 3)  # one RGB colour per class
    image = (colours[label] + rng.integers(-12, 13, (h, w, 3))).clip(0, 255).astype(np.uint8)
    label[h // 4] = 255  # void, as CamVid's "Unlabelled"
    return image, label


def write_camvid_like(root: Path, splits: dict[str, int]) -> None:
    rng = np.random.default_rng(3)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    palette = np.zeros((256, 3), np.uint8)
    palette[:11] = rng.integers(0, 256, (11, 3))
    for split, count in splits.items():
        ids = [f"{split}_{i:03d}" for i in range(count)]
        for image_id in ids:
            image, label = street_photo(rng)
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            png = Image.fromarray(label, mode="P")
            png.putpalette(palette.ravel().tolist())
            png.save(root / "SegmentationClass" / f"{image_id}.png")
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("\n".join(CAMVID) + "\n")


def test_scaled_forward_runs_the_network_at_the_scale_and_answers_at_full_size():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", num_classes=5, output_stride=16)).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        full = scaled_forward(model, x, 1.0)
        half = scaled_forward(model, x, 0.5)
        plain = model(x)
    assert seen == [(64, 96), (32, 48), (64, 96)]
    assert all(v.shape == (1, 5, 64, 96) for v in (*full.values(), *half.values()))
    assert all(torch.equal(full[k], plain[k]) for k in plain)
    assert not torch.allclose(full["t"], half["t"])  # another input size, another answer


def test_photos_preset_trains_and_evaluates_at_half_size():
    preset = PRESETS["photos-cpu"]
    assert preset["scale"] == (0.5, 0.5) and preset["eval_scale"] == 0.5 and preset["class_weights"] == "median-freq"
    assert TrainConfig(shards="out", **{**preset, "class_weights": "none"}).class_weights is None  # --class-weights none
    with pytest.raises(ValueError, match="eval_scale"):
        TrainConfig(shards="out", eval_scale=0)


@pytest.fixture(scope="module")
def camvid_like(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "camvid"
    write_camvid_like(root, {"train": 8, "val": 4, "test": 4})
    return root


def test_pipeline_script_trains_on_train_and_scores_the_held_out_split(camvid_like, tmp_path):
    """EVAL_SPLIT=test: trained on train (curve on val), the final table is test's; a rerun resumes."""
    env = {**os.environ, "EVAL_SPLIT": "test", "OUT": str(tmp_path / "out"), "RUN": "pipeline-test",
           "RUNS": str(tmp_path / "runs"), "MAX_SAMPLES": "40", "WORKERS": "1",
           "TRAIN_ARGS": "--iters1 2 --iters2 1 --crop 32 --batch-size 2 --workers 0 --eval-every 0 --threads 1 --quiet"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    first = subprocess.run(["bash", str(REPO / "scripts" / "pipeline.sh"), str(camvid_like)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "IoU per class on test" in first.stdout and "Sky" in first.stdout
    run_dir = tmp_path / "runs" / "pipeline-test"
    report = json.loads((run_dir / "eval-test" / "report.json").read_text())
    assert f"report: {run_dir}/eval-test/report.json" in first.stdout
    assert report["split"] == "test" and report["samples"] == 4 and list(report["per_class_iou"]) == list(CAMVID)
    assert report["eval_scale"] == 0.5 and report["stage"] == 2  # the preset's scale, the denoised weights
    trained = json.loads((run_dir / "config.json").read_text())
    assert trained["method"] == "sourcesep-cc" and trained["scale"] == [0.5, 0.5]
    assert trained["class_weights"] == "median-freq" and (run_dir / "class_weights.json").is_file()
    assert json.loads((tmp_path / "out" / "mixed" / "manifest.json").read_text())["num_samples"] == 40
    assert json.loads((run_dir / "report.json").read_text())["samples"] == 4  # the curve's split: val

    again = subprocess.run(["bash", str(REPO / "scripts" / "pipeline.sh"), str(camvid_like)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is complete" in again.stdout
    assert json.loads((run_dir / "eval-test" / "report.json").read_text())["miou"] == report["miou"]

    evaluated = CliRunner().invoke(trainer_cli, ["eval", "--checkpoint", str(run_dir / "stage2.pt"), "--shards",
                                                 str(tmp_path / "out"), "--split", "test", "--eval-scale", "1",
                                                 "--workers", "0", "--device", "cpu", "--quiet",
                                                 "--out", str(tmp_path / "full")])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "full" / "report.json").read_text())["eval_scale"] == 1.0

    from trainer.predict import Predictor  # predict and the suites run the network at the run's scale too

    predictor = Predictor(str(run_dir / "stage2.pt"), device="cpu")
    photo = np.array(Image.open(camvid_like / "JPEGImages" / "test_000.jpg"))
    with torch.inference_mode():
        x = torch.from_numpy(photo.transpose(2, 0, 1).copy())
        expected = scaled_forward(predictor.model, normalize(x[None]), 0.5)["t"][0].argmax(0)
    assert predictor.scale == 0.5 and np.array_equal(predictor(photo), expected.numpy())


def test_pipeline_script_refuses_a_missing_split(camvid_like, tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts" / "pipeline.sh"), str(camvid_like)],
                            env={**os.environ, "EVAL_SPLIT": "nosuch"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"pipeline: {camvid_like}/ImageSets/Segmentation/nosuch.txt: no such split list"


def test_median_frequency_class_weights_come_from_the_training_labels(camvid_like, tmp_path):
    from blendgen.generation.clusters import ClusterConfig, build_clusters
    from blendgen.generation.pack import pack
    from blendgen.generation.sources import PackConfig
    from trainer.data import label_pixel_counts
    from trainer.losses import median_frequency_weights
    from trainer.train import run

    out = tmp_path / "out"
    build_clusters(ClusterConfig(dataset="voc", root=camvid_like, split="train", out=out,
                                 reader_options={"classes_file": str(camvid_like / "classes.txt")}), progress=False)
    for split in ("train", "val"):
        pack(PackConfig(out=out, split=split), progress=False)
    pixels, image_pixels = np.zeros(11, np.int64), np.zeros(11, np.int64)
    for image_id in (camvid_like / "ImageSets/Segmentation/train.txt").read_text().split():
        label = np.array(Image.open(camvid_like / "SegmentationClass" / f"{image_id}.png"))
        counts = np.bincount(label[label != 255], minlength=11)
        pixels += counts
        image_pixels += np.where(counts > 0, counts.sum(), 0)
    got = label_pixel_counts(ShardDir.open(out / "train"), 11)
    np.testing.assert_array_equal(got[0], pixels)
    np.testing.assert_array_equal(got[1], image_pixels)

    run(TrainConfig(shards=str(out), method="deeplabv3", out=str(tmp_path / "runs"), name="weighted",
                    backbone="resnet18", crop=32, batch_size=2, iters1=1, iters2=1, workers=0, device="cpu",
                    class_weights="median-freq", progress=False, threads=1))
    written = json.loads((tmp_path / "runs" / "weighted" / "class_weights.json").read_text())
    assert written["rule"] == "median-freq"
    np.testing.assert_allclose(list(written["weights"].values()), median_frequency_weights(pixels, image_pixels),
                               atol=1e-4)  # written rounded to 4 decimals
    assert written["weights"]["Road"] < 1 < written["weights"]["Pole"]  # big classes down, small ones up
