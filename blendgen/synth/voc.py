"""A synthetic miniature of PASCAL VOC 2012 segmentation, for demos, tests and CPU smoke runs.

    from blendgen.synth.sets import SynthConfig
    from blendgen.synth.voc import make_synthetic_voc
    make_synthetic_voc(SynthConfig(out=Path("data/synth-voc"), seed=0, num_train=400, num_val=120))

or ``blendgen synth --out data/synth-voc --seed 0 --train 400 --val 120``. The result is read by
:class:`blendgen.datasets.voc.VOCReader` like the real thing::

    out/JPEGImages/2026_000001.jpg          RGB, JPEG quality 90
    out/SegmentationClass/2026_000001.png   palette PNG: 0 background, 1..20 VOC classes, 255 void
    out/SegmentationObject/2026_000001.png  palette PNG: instances 1..n in paint order, 255 void
    out/Annotations/2026_000001.xml         VOC XML: name, truncated, occluded, 1-based bndbox
    out/ImageSets/Segmentation/{train,val}.txt
    out/synth.json                          the config (without ``out``) and the summary

Each image is one scene of the generative model (:mod:`blendgen.synth.model`, drawn by
:func:`blendgen.synth.render.render_sample`); this module writes it in VOC's files.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from dataclasses import asdict
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from ..datasets.classes import IGNORE_INDEX, VOC_CLASSES, voc_palette
from .render import Sample, SampleObject, render_sample
from .sets import JPEG_QUALITY, SPLITS, SynthConfig, _run, fresh_partial_dir


_PALETTE = voc_palette().tobytes()


def _write_palette_png(path: Path, ids: np.ndarray) -> None:
    im = Image.fromarray(ids)  # mode "L"; attaching the palette makes it "P" as VOC's PNGs
    im.putpalette(_PALETTE)
    im.save(path, format="PNG")


def voc_xml(image_id: str, h: int, w: int, objects: list[SampleObject]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "blendgen synthetic VOC"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for o in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = o.name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(o.truncated))
        ET.SubElement(obj, "occluded").text = str(int(o.occluded))
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), o.bbox):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def write_sample(root: Path, image_id: str, sample: Sample) -> None:
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"{image_id}: JPEG encoding failed")
    (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg.tobytes())
    _write_palette_png(root / "SegmentationClass" / f"{image_id}.png", sample.label)
    _write_palette_png(root / "SegmentationObject" / f"{image_id}.png", sample.instances)
    h, w = sample.label.shape
    (root / "Annotations" / f"{image_id}.xml").write_bytes(voc_xml(image_id, h, w, sample.objects))


def _make_one(task: tuple[str, int, str], root: Path, seed: int, min_size: int, max_size: int,
              object_scale: float = 1.0) -> dict:
    """Worker: render and write one image; return what the summary needs."""
    split, index, image_id = task
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    sample = render_sample(rng, min_size, max_size, object_scale)
    write_sample(root, image_id, sample)
    return {"split": split, "classes": sorted({o.name for o in sample.objects}),
            "objects": len(sample.objects), "occluded": sum(o.occluded for o in sample.objects),
            "truncated": sum(o.truncated for o in sample.objects), "dropped": sample.dropped,
            "object_pixels": int(((sample.label > 0) & (sample.label != IGNORE_INDEX)).sum()),
            "labelled_pixels": int((sample.label != IGNORE_INDEX).sum())}


def _summarize(records: list[dict]) -> dict:
    summary = {key: {s: 0 for s in SPLITS} for key in ("images", "objects", "occluded_objects",
                                                       "truncated_objects", "dropped_objects")}
    summary["class_images"] = {s: {c: 0 for c in VOC_CLASSES[1:]} for s in SPLITS}
    for r in records:
        s = r["split"]
        summary["images"][s] += 1
        summary["objects"][s] += r["objects"]
        summary["occluded_objects"][s] += r["occluded"]
        summary["truncated_objects"][s] += r["truncated"]
        summary["dropped_objects"][s] += r["dropped"]
        for c in r["classes"]:
            summary["class_images"][s][c] += 1
    labelled = {s: sum(r["labelled_pixels"] for r in records if r["split"] == s) for s in SPLITS}
    summary["object_pixel_fraction"] = {
        s: round(sum(r["object_pixels"] for r in records if r["split"] == s) / max(labelled[s], 1), 4) for s in SPLITS}
    return summary


def make_synthetic_voc(config: SynthConfig, progress: bool = True) -> dict:
    """Write the synthetic dataset to ``config.out`` (see the module docstring); return a summary:
    ``images``, ``objects``, ``occluded_objects``, ``truncated_objects``, ``dropped_objects`` per
    split, and ``class_images[split][class]``, the number of images containing each class.

    Generation happens in ``<out>.partial`` and is renamed to ``out`` when complete. Raises
    FileExistsError if ``out`` exists and is not empty.
    """
    out = config.out
    partial_dir = fresh_partial_dir(out)
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations",
                "ImageSets/Segmentation"):
        (partial_dir / sub).mkdir(parents=True)
    try:
        tasks = [(split, i, image_id) for split in SPLITS for i, image_id in enumerate(config.image_ids(split))]
        work = partial(_make_one, root=partial_dir, seed=config.seed,
                       min_size=config.min_size, max_size=config.max_size, object_scale=config.object_scale)
        records = []
        with tqdm(total=len(tasks), desc="synth", unit="img", disable=not progress) as bar:
            for record in _run(work, tasks, config.workers):
                records.append(record)
                bar.update(1)
        for split in SPLITS:
            ids = config.image_ids(split)
            (partial_dir / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        summary = _summarize(records)
        settings = {k: v for k, v in asdict(config).items() if k not in ("out", "workers")}
        (partial_dir / "synth.json").write_text(json.dumps({"config": settings, "summary": summary}, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above; rename will not replace a directory portably
        partial_dir.rename(out)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    return summary
