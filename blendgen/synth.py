"""A synthetic miniature of PASCAL VOC 2012 segmentation, for demos, tests and CPU smoke runs.

    from blendgen.synth import SynthConfig, make_synthetic_voc
    make_synthetic_voc(SynthConfig(out=Path("data/synth-voc"), seed=0, num_train=400, num_val=120))

or ``blendgen synth --out data/synth-voc --seed 0 --train 400 --val 120``. The result is read by
:class:`blendgen.readers.VOCReader` like the real thing::

    out/JPEGImages/2026_000001.jpg          RGB, JPEG quality 90
    out/SegmentationClass/2026_000001.png   palette PNG: 0 background, 1..20 VOC classes, 255 void
    out/SegmentationObject/2026_000001.png  palette PNG: instances 1..n in paint order, 255 void
    out/Annotations/2026_000001.xml         VOC XML: name, truncated, occluded, 1-based bndbox
    out/ImageSets/Segmentation/{train,val}.txt
    out/synth.json                          the config (without ``out``) and the summary

Why a miniature: the papers' evaluations (co-occurrence clusters, "co-occur with person" vs
"exclusive", object-pair frequency subsets, 1-Occ/All-Occ) only mean something if the data has
VOC's *structure*: a skewed class prior, classes that come in groups, occlusions, truncation, a
void band. Real VOC cannot ship with the project, so this module draws that structure from an
explicit generative model small enough to read in one sitting.

The generative model, per image (every draw from ``default_rng([seed, split_code, index])``, so
images are independent of each other, of the worker count and of the other split's size):

1. **Size**: width and height independently uniform in ``[min_size, max_size]``.
2. **Classes**: a *primary* class is drawn from :data:`PRIMARY_WEIGHT` (VOC-like frequencies;
   person dominant), then the number of objects n from :data:`NUM_OBJECTS` (about half the
   images hold one object, as in VOC; :data:`NUM_OBJECTS_INDOOR`, more cluttered, when the
   primary is one of the :data:`INDOOR` classes). The n-1 companions are drawn,
   with replacement, from the primary's row of :data:`COMPANIONS` (people with bicycles, horses,
   chairs, bottles...; an indoor group chair-diningtable-bottle-pottedplant-sofa-tvmonitor;
   vehicles with person and car; animals with their own kind or a person). A class is never
   drawn next to one it forms a pair with in :data:`NEVER_TOGETHER`, so those pairs have zero
   co-occurrence by construction; pairs reachable only through the person row are rare.
3. **Scene**: the background type (sky, field, water, street, indoor) comes from
   :data:`SCENE_PRIOR` of the first non-person class (cows on grass, boats on water, sofas
   indoors), with :data:`ABSTRACT_BACKGROUND_P` of images on a context-free gradient + noise.
4. **Placement**: each object gets a box of its class's aspect ratio and relative size (with
   jitter), a small rotation and a random mirror. Companions are placed next to an earlier object
   (so that they overlap) with probability :data:`NEAR_P`, anywhere otherwise. Objects may cross
   the image border (``truncated``).
5. **Depth**: objects are painted in order of their lower edge (lower in the picture = nearer),
   with noise; a later object occludes an earlier one. An object left with too few visible pixels
   is dropped (and counted in the summary), as an annotator would not label it either.
6. **Appearance**: each class has its own shape (drawn from ellipses, polygons and thick lines
   in a unit box; see ``_draw_<class>``), a few possible colours with per-instance jitter, and
   textures (stripes, checker, dots, patches, noise) of class-specific period and orientation.
   Colours overlap on purpose (white aeroplanes, boats, buses and sheep; brown chairs, tables,
   dogs, horses and cows), so a network must use shape and texture, not colour alone.
7. **Labels**: class and instance maps from the paint order; the void band (255) marks pixels
   near any change of instance id, i.e. object outlines against the background *and* borders
   between overlapping objects, about 1% of the image size wide like VOC's 5 px at 500 px (at
   least 2 px). The XML bbox is that of the object's visible pixels; ``occluded`` is 1 when at
   least :data:`OCCLUDED_FRACTION` of the object's own in-image shape is covered by later
   objects; ``truncated`` is 1 when its shape extends past the image border.
8. **Camera**: a slight blur and sensor noise, then JPEG.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from .classes import IGNORE_INDEX, VOC_CLASSES, voc_palette

__all__ = ["SynthConfig", "make_synthetic_voc", "render_sample", "Sample", "SampleObject"]

CLASS_ID = {name: i for i, name in enumerate(VOC_CLASSES)}
SPLITS = ("train", "val")
ID_PREFIX = "2026_"

# -- the generative model, as data ------------------------------------------------------------
# Number of objects per image. VOC 2012 segmentation: about half the images hold one object.
NUM_OBJECTS = {1: 0.55, 2: 0.24, 3: 0.12, 4: 0.09}
# Indoor scenes are cluttered: in VOC a dining table or a sofa rarely stands alone.
INDOOR = ("bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor")
NUM_OBJECTS_INDOOR = {1: 0.25, 2: 0.3, 3: 0.25, 4: 0.2}

# Weight of each class as an image's primary object. Shaped after VOC 2012's per-class image
# counts; person ends up in about a third of the images once companions add to it.
PRIMARY_WEIGHT = {
    "aeroplane": 5.0, "bicycle": 3.5, "bird": 6.0, "boat": 4.5, "bottle": 3.5, "bus": 4.0,
    "car": 5.0, "cat": 7.0, "chair": 4.5, "cow": 3.5, "diningtable": 4.0, "dog": 7.0,
    "horse": 3.5, "motorbike": 4.0, "person": 19.0, "pottedplant": 3.5, "sheep": 3.5,
    "sofa": 4.0, "train": 5.0, "tvmonitor": 4.0,
}

# Companions of a primary class: relative weights of the class of each further object.
# A class listing itself gives groups (people, herds, parked cars, a set of chairs).
COMPANIONS = {
    "person": {"person": 6, "bicycle": 2, "motorbike": 2, "horse": 2, "chair": 2, "sofa": 1,
               "diningtable": 1.5, "bottle": 1.5, "car": 1.5, "boat": 1, "dog": 1.5, "cat": 0.5,
               "bus": 0.5, "tvmonitor": 1, "pottedplant": 0.5, "sheep": 0.3, "cow": 0.3},
    "aeroplane": {"aeroplane": 2, "person": 1, "car": 0.5},
    "bicycle": {"person": 4, "bicycle": 2, "car": 1, "motorbike": 0.3},
    "bird": {"bird": 4, "person": 0.3, "boat": 0.5},
    "boat": {"boat": 3, "person": 3, "bird": 0.5},
    "bottle": {"bottle": 3, "person": 2, "diningtable": 2, "chair": 1, "tvmonitor": 0.5,
               "pottedplant": 0.5},
    "bus": {"bus": 1, "car": 3, "person": 3, "motorbike": 0.5},
    "car": {"car": 4, "person": 3, "bus": 1, "motorbike": 1, "bicycle": 0.5},
    "cat": {"cat": 2, "person": 1, "sofa": 1, "chair": 0.5, "dog": 0.3, "tvmonitor": 0.3},
    "chair": {"chair": 4, "diningtable": 3, "person": 2, "sofa": 1, "pottedplant": 1, "bottle": 1,
              "tvmonitor": 1},
    "cow": {"cow": 5, "person": 1, "sheep": 0.5, "horse": 0.3},
    "diningtable": {"chair": 4, "person": 3, "bottle": 2, "pottedplant": 1, "diningtable": 0.3,
                    "tvmonitor": 0.3},
    "dog": {"dog": 2, "person": 3, "sofa": 0.5, "cat": 0.3, "chair": 0.3},
    "horse": {"horse": 2, "person": 4, "cow": 0.3, "sheep": 0.2},
    "motorbike": {"person": 4, "motorbike": 2, "car": 1, "bicycle": 0.3},
    "pottedplant": {"pottedplant": 2, "chair": 2, "sofa": 1, "person": 1, "diningtable": 1,
                    "tvmonitor": 0.5},
    "sheep": {"sheep": 5, "person": 1, "cow": 0.5, "dog": 0.3},
    "sofa": {"chair": 2, "person": 2, "sofa": 1, "pottedplant": 1, "tvmonitor": 1, "cat": 0.5,
             "dog": 0.5},
    "train": {"train": 1, "person": 1.5, "car": 0.3},
    "tvmonitor": {"tvmonitor": 1.5, "chair": 2, "sofa": 1, "person": 2, "pottedplant": 1,
                  "bottle": 1, "diningtable": 0.5},
}

# Pairs that never share an image (out-of-context by construction). Most other pairs missing
# from COMPANIONS are merely rare (reachable only through the person row) or absent too.
NEVER_TOGETHER = frozenset(frozenset(p) for p in [
    ("aeroplane", "cow"), ("aeroplane", "sofa"), ("train", "sofa"), ("train", "diningtable"),
    ("boat", "tvmonitor"), ("bus", "sheep"), ("bird", "tvmonitor"), ("cow", "diningtable"),
])

SCENES = ("sky", "field", "water", "street", "indoor")
SCENE_PRIOR = {
    "aeroplane": {"sky": 4, "street": 1}, "bicycle": {"street": 3, "field": 1},
    "bird": {"sky": 2, "field": 2, "water": 1}, "boat": {"water": 5},
    "bottle": {"indoor": 5}, "bus": {"street": 5}, "car": {"street": 5, "field": 0.5},
    "cat": {"indoor": 3, "field": 1}, "chair": {"indoor": 5}, "cow": {"field": 5},
    "diningtable": {"indoor": 5}, "dog": {"field": 2, "indoor": 2}, "horse": {"field": 5},
    "motorbike": {"street": 4, "field": 1},
    "person": {"indoor": 2, "street": 2, "field": 1.5, "water": 0.3},
    "pottedplant": {"indoor": 5}, "sheep": {"field": 5}, "sofa": {"indoor": 5},
    "train": {"street": 2, "field": 2}, "tvmonitor": {"indoor": 5},
}
ABSTRACT_BACKGROUND_P = 0.2  # images whose background carries no context at all

# Geometry: width/height of the class's box, and its size relative to the image's shorter side.
ASPECT = {
    "aeroplane": 1.7, "bicycle": 1.6, "bird": 1.3, "boat": 1.1, "bottle": 0.32, "bus": 2.3,
    "car": 2.1, "cat": 1.3, "chair": 0.7, "cow": 1.45, "diningtable": 1.7, "dog": 1.35,
    "horse": 1.2, "motorbike": 1.55, "person": 0.4, "pottedplant": 0.75, "sheep": 1.35,
    "sofa": 2.0, "train": 3.0, "tvmonitor": 1.25,
}
REL_SIZE = {
    "aeroplane": 1.0, "bicycle": 0.85, "bird": 0.55, "boat": 0.9, "bottle": 0.6, "bus": 1.05,
    "car": 0.9, "cat": 0.75, "chair": 0.7, "cow": 0.9, "diningtable": 1.0, "dog": 0.75,
    "horse": 0.95, "motorbike": 0.85, "person": 0.85, "pottedplant": 0.6, "sheep": 0.7,
    "sofa": 1.0, "train": 1.15, "tvmonitor": 0.6,
}
NEAR_P = 0.65              # companions placed next to (overlapping) an earlier object
OCCLUDED_FRACTION = 0.08   # covered share of an object's own shape that makes it "occluded"
MIN_VISIBLE_FRACTION = 0.3  # below this, an object is dropped (counted) rather than labelled
MIN_VISIBLE_PIXELS = 24
JPEG_QUALITY = 90

# Appearance. Parts of a drawn shape: 1 main colour (textured), 2 dark (tyres, windows, legs),
# 3 the class accent (skin, sails, screen, pot), 4 a second main colour (trousers, a wing).
# Textures: (kind, period in px, orientation in degrees, amplitude); one is chosen per instance.
RGB = tuple[int, int, int]
LOOKS: dict[str, tuple[tuple[RGB, ...], RGB, tuple[tuple[str, float, float, float], ...]]] = {
    # class: (main colours, accent colour, textures)
    "aeroplane": (((225, 225, 230), (200, 205, 215), (190, 60, 50)), (40, 60, 120),
                  (("stripes", 16, 0, 0.12), ("plain", 0, 0, 0.0))),
    "bicycle": (((40, 90, 200), (200, 40, 40), (30, 30, 30), (220, 200, 40)), (60, 60, 60),
                (("plain", 0, 0, 0.0),)),
    "bird": (((110, 80, 50), (45, 45, 45), (200, 180, 60), (150, 150, 160)), (230, 150, 30),
             (("stripes", 4, 45, 0.25), ("noise", 3, 0, 0.25))),
    "boat": (((240, 240, 240), (160, 50, 40), (50, 70, 140), (120, 80, 50)), (235, 230, 215),
             (("stripes", 6, 0, 0.2),)),
    "bottle": (((40, 120, 60), (130, 80, 35), (170, 195, 205)), (230, 225, 200),
               (("stripes", 9, 90, 0.3),)),
    "bus": (((230, 190, 40), (200, 40, 40), (240, 240, 240), (40, 110, 60)), (230, 230, 230),
            (("noise", 12, 0, 0.1), ("stripes", 20, 0, 0.12))),
    "car": (((180, 30, 30), (40, 60, 150), (190, 190, 195), (30, 30, 30), (230, 230, 230)),
            (250, 240, 200), (("stripes", 24, 20, 0.18), ("plain", 0, 0, 0.0))),
    "cat": (((200, 130, 60), (95, 95, 95), (35, 35, 35), (220, 215, 205)), (240, 200, 200),
            (("stripes", 5, 80, 0.3), ("noise", 3, 0, 0.2))),
    "chair": (((120, 75, 40), (50, 50, 50), (170, 120, 70), (150, 40, 40)), (90, 60, 40),
              (("stripes", 3, 90, 0.2),)),
    "cow": (((240, 240, 235), (120, 70, 40), (60, 45, 35)), (230, 180, 170),
            (("patches", 14, 0, 1.0), ("noise", 8, 0, 0.12))),
    "diningtable": (((140, 90, 50), (180, 130, 80), (235, 235, 230), (100, 60, 35)),
                    (200, 200, 190), (("stripes", 3, 0, 0.2), ("checker", 8, 0, 0.15))),
    "dog": (((170, 120, 70), (60, 40, 30), (220, 200, 170), (30, 30, 30)), (40, 30, 25),
            (("noise", 3, 0, 0.2), ("patches", 12, 0, 0.6))),
    "horse": (((110, 60, 30), (60, 40, 25), (200, 190, 180), (150, 100, 60)), (30, 25, 20),
              (("noise", 20, 0, 0.1),)),
    "motorbike": (((20, 20, 20), (180, 20, 20), (40, 60, 160), (200, 200, 210)), (250, 240, 180),
                  (("stripes", 30, 30, 0.2),)),
    "person": (((200, 40, 40), (40, 70, 160), (30, 30, 30), (230, 230, 230), (60, 120, 60),
                (220, 180, 60), (120, 80, 140)), (225, 180, 150),
               (("checker", 6, 0, 0.15), ("stripes", 5, 0, 0.2), ("plain", 0, 0, 0.0))),
    "pottedplant": (((50, 130, 50), (80, 150, 40), (40, 100, 60)), (170, 80, 50),
                    (("dots", 4, 0, 0.35), ("noise", 3, 0, 0.35))),
    "sheep": (((225, 220, 200), (200, 195, 180), (240, 235, 225)), (45, 40, 35),
              (("dots", 4, 30, 0.25),)),
    "sofa": (((100, 60, 120), (150, 40, 40), (90, 90, 100), (170, 150, 110), (60, 90, 60)),
             (80, 60, 50), (("checker", 2.5, 0, 0.15), ("noise", 6, 0, 0.12))),
    "train": (((60, 80, 160), (200, 40, 40), (230, 230, 230), (60, 110, 70)), (240, 200, 40),
              (("stripes", 8, 0, 0.15),)),
    "tvmonitor": (((30, 30, 30), (60, 60, 65), (190, 190, 195)), (70, 130, 200),
                  (("plain", 0, 0, 0.0),)),
}


# -- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    out: Path
    seed: int = 0
    num_train: int = 400
    num_val: int = 120
    min_size: int = 96   # width and height are drawn independently from [min_size, max_size]
    max_size: int = 192
    # Object size against the image's shorter side (ours). At 1.0 objects cover 9% of the labelled
    # pixels, at 1.7 about 23%; the larger objects did not make the demo learn faster
    # (docs/experiments.md), so the demo set keeps 1.0.
    object_scale: float = 1.0
    workers: int = 1     # processes; the output does not depend on it

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))
        for name in ("seed", "num_train", "num_val", "min_size", "max_size", "workers"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name}: expected an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers would not go into JSON
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0 (numpy seed sequences take no negatives), got {self.seed}")
        if self.num_train < 1:
            raise ValueError(f"num_train: need at least 1 training image, got {self.num_train}")
        if self.num_val < 1:
            raise ValueError(f"num_val: need at least 1 validation image, got {self.num_val}")
        if self.num_train + self.num_val > 999_999:
            raise ValueError("num_train: ids have 6 digits, at most 999999 images in all (with num_val)")
        if self.min_size < 32:
            raise ValueError(f"min_size: must be >= 32 px for objects to stay recognisable, got {self.min_size}")
        if self.max_size < self.min_size:
            raise ValueError(f"max_size: must be >= min_size ({self.min_size}), got {self.max_size}")
        if self.max_size > 4096:
            raise ValueError(f"max_size: must be <= 4096, got {self.max_size}")
        if not isinstance(self.object_scale, (int, float)) or not 0.25 <= self.object_scale <= 3:
            raise ValueError(f"object_scale: expected a number in [0.25, 3], got {self.object_scale!r}")
        object.__setattr__(self, "object_scale", float(self.object_scale))
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")

    def image_ids(self, split: str) -> list[str]:
        """Ids run on across splits, train first: 2026_000001 ... like VOC's year_number ids."""
        start = 1 if split == "train" else 1 + self.num_train
        count = self.num_train if split == "train" else self.num_val
        return [f"{ID_PREFIX}{start + i:06d}" for i in range(count)]


# -- records -----------------------------------------------------------------------------------
@dataclass
class SampleObject:
    name: str
    bbox: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax: 1-based, inclusive, visible pixels
    truncated: bool
    occluded: bool


@dataclass
class Sample:
    image: np.ndarray      # (H, W, 3) uint8 RGB
    label: np.ndarray      # (H, W) uint8 class ids, 255 void
    instances: np.ndarray  # (H, W) uint8 instance ids 1..n in paint order, 255 void
    objects: list[SampleObject]
    scene: str
    dropped: int = 0       # objects placed but too hidden to label


@dataclass
class _Placement:
    name: str
    cx: float
    cy: float
    w: float
    h: float
    angle: float  # degrees
    flip: bool


@dataclass
class _Drawn:
    """An object's part map drawn on a local canvas whose top-left is (x0, y0) in the image."""

    name: str
    x0: int
    y0: int
    parts: np.ndarray  # (S, S) uint8, 0 outside, part number inside
    placement: _Placement = field(repr=False)


# -- step 2: classes ---------------------------------------------------------------------------
def _choose(rng: np.random.Generator, weights: dict) -> str | int:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=np.float64)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def sample_classes(rng: np.random.Generator) -> list[str]:
    """Primary class, then companions from its row of COMPANIONS, never a NEVER_TOGETHER pair."""
    classes = [_choose(rng, PRIMARY_WEIGHT)]
    n = _choose(rng, NUM_OBJECTS_INDOOR if classes[0] in INDOOR else NUM_OBJECTS)
    row = COMPANIONS[classes[0]]
    for _ in range(n - 1):
        allowed = {c: w for c, w in row.items()
                   if not any(frozenset((c, other)) in NEVER_TOGETHER for other in classes)}
        if not allowed:
            break
        classes.append(_choose(rng, allowed))
    return classes


def sample_scene(rng: np.random.Generator, classes: list[str]) -> str:
    if rng.random() < ABSTRACT_BACKGROUND_P:
        return "abstract"
    context = next((c for c in classes if c != "person"), "person")
    return _choose(rng, SCENE_PRIOR[context])


# -- step 3: backgrounds -----------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(h, w) float32 noise in about [-1, 1] with features ``cell`` px apart."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.uniform(-1, 1, size=(gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _jitter(rng: np.random.Generator, rgb, spread: float = 10.0) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0, spread, 3), 0, 255).astype(np.float32)


def _vertical_gradient(h: int, w: int, top, bottom) -> np.ndarray:
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to((1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32),
                           (h, w, 3)).copy()


def _sky(rng, h, w) -> np.ndarray:
    img = _vertical_gradient(h, w, _jitter(rng, (70, 120, 200), 20), _jitter(rng, (185, 210, 235), 15))
    clouds = np.clip(_smooth_noise(rng, h, w, rng.uniform(20, 60)) - rng.uniform(0.0, 0.6), 0, 1)
    return img + clouds[..., None] * (255 - img) * 0.8


def _with_horizon(rng, h, w, ground: np.ndarray, lo: float, hi: float) -> np.ndarray:
    horizon = int(h * rng.uniform(lo, hi))
    if horizon > 0:
        ground[:horizon] = _sky(rng, horizon, w)
    return ground


def _field(rng, h, w) -> np.ndarray:
    grass = _vertical_gradient(h, w, _jitter(rng, (120, 160, 70), 20), _jitter(rng, (60, 110, 40), 15))
    grass *= 1 + 0.15 * _smooth_noise(rng, h, w, 3)[..., None] + 0.1 * _smooth_noise(rng, h, w, 25)[..., None]
    return _with_horizon(rng, h, w, grass, 0.1, 0.45)


def _water(rng, h, w) -> np.ndarray:
    water = _vertical_gradient(h, w, _jitter(rng, (60, 110, 150), 20), _jitter(rng, (25, 60, 100), 15))
    y = np.arange(h, dtype=np.float32)[:, None]
    waves = np.sin(y * rng.uniform(0.6, 1.2) + 4 * _smooth_noise(rng, h, w, 20))
    water *= 1 + 0.12 * waves[..., None]
    return _with_horizon(rng, h, w, water, 0.15, 0.45)


def _street(rng, h, w) -> np.ndarray:
    img = _vertical_gradient(h, w, _jitter(rng, (110, 110, 115), 15), _jitter(rng, (80, 80, 85), 10))
    img *= 1 + 0.08 * _smooth_noise(rng, h, w, 2)[..., None]
    road_top = int(h * rng.uniform(0.45, 0.7))
    # Buildings: blocks of wall colour with a grid of darker windows, above the road.
    x = 0
    while x < w:
        bw = int(rng.uniform(0.2, 0.5) * w) + 1
        top = int(rng.uniform(0.0, 0.4) * road_top)
        wall = _jitter(rng, rng.choice([(170, 150, 130), (140, 140, 150), (190, 180, 160), (120, 90, 80)]), 15)
        img[top:road_top, x:x + bw] = wall
        step = max(4, int(rng.uniform(0.06, 0.12) * h))
        for wy in range(top + step // 2, road_top - step, step):
            for wx in range(x + step // 2, x + bw - step // 2, step):
                img[wy:wy + step // 2, wx:wx + step // 2] = wall * 0.45
        x += bw
    sky_h = int(rng.uniform(0.0, 0.25) * road_top)
    if sky_h > 0:
        img[:sky_h] = _sky(rng, sky_h, w)
    lane_y = road_top + int((h - road_top) * rng.uniform(0.4, 0.7))
    for lx in range(int(rng.uniform(0, 20)), w, 24):  # dashed lane marking
        img[lane_y:lane_y + 2, lx:lx + 12] = (220, 220, 210)
    return img


def _indoor(rng, h, w) -> np.ndarray:
    wall = _jitter(rng, rng.choice([(215, 205, 180), (190, 200, 210), (220, 220, 215), (200, 170, 150)]), 15)
    img = np.broadcast_to(wall, (h, w, 3)).copy()
    if rng.random() < 0.5:  # wallpaper stripes
        period = rng.uniform(6, 16)
        img *= 1 + 0.06 * np.sign(np.sin(np.arange(w, dtype=np.float32) * 2 * np.pi / period))[None, :, None]
    if rng.random() < 0.4:  # a bright window
        x0, y0 = int(rng.uniform(0, 0.7) * w), int(rng.uniform(0.05, 0.3) * h)
        img[y0:y0 + int(0.3 * h), x0:x0 + int(0.25 * w)] = _jitter(rng, (235, 240, 250), 8)
    floor_y = int(h * rng.uniform(0.55, 0.8))
    floor = _jitter(rng, rng.choice([(150, 105, 65), (120, 120, 120), (170, 140, 100)]), 15)
    y = np.arange(h - floor_y, dtype=np.float32)[:, None]
    planks = 1 + 0.1 * np.sign(np.sin(y * 2 * np.pi / rng.uniform(5, 10)))
    img[floor_y:] = floor * (planks * (1 + 0.08 * _smooth_noise(rng, h - floor_y, w, 2)))[..., None]
    # Indoor light falls off towards the corners.
    return img * _vignette(h, w, rng.uniform(0.1, 0.3))[..., None]


def _abstract(rng, h, w) -> np.ndarray:
    a, b = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * np.cos(theta) + yy * np.sin(theta))
    t = ((t - t.min()) / max(1e-6, float(t.max() - t.min())))[..., None]
    img = (1 - t) * a + t * b
    return img * (1 + 0.2 * _smooth_noise(rng, h, w, rng.uniform(3, 30)))[..., None]


def _vignette(h: int, w: int, strength: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2
    return 1 - strength * r2


BACKGROUNDS = {"sky": _sky, "field": _field, "water": _water, "street": _street,
               "indoor": _indoor, "abstract": _abstract}


# -- step 4: placement -------------------------------------------------------------------------
def place_objects(rng: np.random.Generator, classes: list[str], h: int, w: int,
                  object_scale: float = 1.0) -> list[_Placement]:
    short = min(h, w) * object_scale
    # VOC objects fill much of the frame when alone and get smaller in company.
    lo, hi = (0.55, 0.95) if len(classes) == 1 else (0.35, 0.75)
    placed: list[_Placement] = []
    for name in classes:
        size = REL_SIZE[name] * rng.uniform(lo, hi) * short  # the longer side of the box
        aspect = ASPECT[name] * math.exp(rng.normal(0, 0.12))
        bw, bh = (size, size / aspect) if aspect >= 1 else (size * aspect, size)
        if placed and rng.random() < NEAR_P:
            ref = placed[rng.integers(len(placed))]
            side = rng.choice([-1, 1])
            cx = ref.cx + side * rng.uniform(0.2, 0.8) * (ref.w + bw) / 2
            cy = ref.cy + (ref.h - bh) / 2 * rng.uniform(0.3, 1.0) + rng.normal(0, 0.1) * ref.h
        else:
            cx, cy = rng.uniform(0.12, 0.88) * w, rng.uniform(0.2, 0.85) * h
        cx, cy = float(np.clip(cx, 0.05 * w, 0.95 * w)), float(np.clip(cy, 0.05 * h, 0.95 * h))
        spin = 25 if name in ("bird", "aeroplane") else 8
        placed.append(_Placement(name, cx, cy, bw, bh, float(rng.normal(0, spin / 2)), bool(rng.random() < 0.5)))
    return placed


def paint_order(rng: np.random.Generator, placements: list[_Placement], h: int) -> list[int]:
    """Lower edge lower in the picture = nearer the camera = painted later, with noise."""
    depth = [p.cy + p.h / 2 + rng.normal(0, 0.1 * h) for p in placements]
    return sorted(range(len(placements)), key=lambda i: depth[i])


# -- step 6: shapes ----------------------------------------------------------------------------
_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel vertices keep small shapes smooth
_ONE = 1 << _SHIFT


class _Pen:
    """Draws part numbers on a local canvas in the unit box of one object.

    (u, v) in [0, 1]^2: u to the right (mirrored when ``flip``), v down; the box is centred at
    (cx, cy) with size (w, h) and rotated by ``angle`` degrees. Radii and thicknesses ``r`` are in
    units of the box's shorter side, so wheels and heads stay round under aspect jitter.
    """

    def __init__(self, canvas: np.ndarray, p: _Placement, cx: float, cy: float):
        self.canvas, self.p, self.cx, self.cy = canvas, p, cx, cy
        self.unit = min(p.w, p.h)
        a = math.radians(p.angle)
        self.cos, self.sin = math.cos(a), math.sin(a)

    def xy(self, u: float, v: float) -> tuple[float, float]:
        dx = (u - 0.5) * self.p.w * (-1 if self.p.flip else 1)
        dy = (v - 0.5) * self.p.h
        return self.cx + dx * self.cos - dy * self.sin, self.cy + dx * self.sin + dy * self.cos

    def _fixed(self, u: float, v: float) -> tuple[int, int]:
        x, y = self.xy(u, v)
        return int(round(x * _ONE)), int(round(y * _ONE))

    def poly(self, pts, part: int = 1) -> None:
        arr = np.array([self._fixed(u, v) for u, v in pts], dtype=np.int32)
        cv2.fillPoly(self.canvas, [arr], part, cv2.LINE_8, _SHIFT)

    def rect(self, u0, v0, u1, v1, part: int = 1) -> None:
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], part)

    def ellipse(self, u, v, ru, rv, part: int = 1, angle: float = 0.0) -> None:
        """Radii as fractions of the box's width (ru) and height (rv)."""
        axes = (int(round(ru * self.p.w * _ONE)), int(round(rv * self.p.h * _ONE)))
        rot = self.p.angle + (-angle if self.p.flip else angle)
        cv2.ellipse(self.canvas, self._fixed(u, v), axes, rot, 0, 360, part, -1, cv2.LINE_8, _SHIFT)

    def circle(self, u, v, r, part: int = 1, thickness: float = 0.0) -> None:
        """Filled circle, or a ring of the given thickness (both in units of the shorter side)."""
        t = -1 if thickness <= 0 else max(1, int(round(thickness * self.unit)))
        cv2.circle(self.canvas, self._fixed(u, v), int(round(r * self.unit * _ONE)), part, t, cv2.LINE_8, _SHIFT)

    def line(self, u0, v0, u1, v1, thickness: float, part: int = 1) -> None:
        t = max(1, int(round(thickness * self.unit)))
        cv2.line(self.canvas, self._fixed(u0, v0), self._fixed(u1, v1), part, t, cv2.LINE_8, _SHIFT)

    def polyline(self, pts, thickness: float, part: int = 1) -> None:
        for (u0, v0), (u1, v1) in zip(pts, pts[1:]):
            self.line(u0, v0, u1, v1, thickness, part)


def _draw_person(pen: _Pen, rng) -> None:
    arm = rng.uniform(-0.15, 0.35)  # raised or hanging arms
    stride = rng.uniform(0.0, 0.15)
    pen.line(0.38, 0.52, 0.3 - stride, 0.98, 0.2, 4)  # legs (trousers: second colour)
    pen.line(0.62, 0.52, 0.7 + stride, 0.98, 0.2, 4)
    pen.line(0.2, 0.22, 0.05, 0.5 - arm, 0.14, 1)     # arms
    pen.line(0.8, 0.22, 0.95, 0.5 - arm * rng.uniform(0, 1), 0.14, 1)
    pen.poly([(0.16, 0.17), (0.84, 0.17), (0.78, 0.56), (0.22, 0.56)], 1)  # torso
    pen.circle(0.5, 0.08, 0.19, 3)  # head (skin), about a seventh of the height


def _draw_bicycle(pen: _Pen, rng) -> None:
    for u in (0.22, 0.78):
        pen.circle(u, 0.68, 0.31, 2, thickness=0.07)  # tyres: rings, the inside is background
    frame = [(0.22, 0.68), (0.42, 0.32), (0.5, 0.7), (0.22, 0.68)]
    pen.polyline(frame, 0.06, 1)
    pen.polyline([(0.42, 0.32), (0.72, 0.32), (0.5, 0.7)], 0.06, 1)
    pen.line(0.72, 0.32, 0.78, 0.68, 0.06, 1)   # fork
    pen.line(0.72, 0.32, 0.68, 0.1, 0.05, 1)    # stem and handlebar
    pen.line(0.62, 0.1, 0.74, 0.1, 0.06, 2)
    pen.line(0.36, 0.27, 0.48, 0.27, 0.08, 2)   # saddle


def _draw_motorbike(pen: _Pen, rng) -> None:
    for u in (0.2, 0.8):
        pen.circle(u, 0.7, 0.28, 2, thickness=0.12)
        pen.circle(u, 0.7, 0.08, 4)
    pen.poly([(0.28, 0.5), (0.5, 0.35), (0.74, 0.38), (0.7, 0.66), (0.4, 0.72)], 1)
    pen.rect(0.25, 0.34, 0.55, 0.43, 2)         # seat
    pen.line(0.72, 0.35, 0.8, 0.7, 0.07, 4)     # fork
    pen.line(0.66, 0.2, 0.8, 0.3, 0.06, 2)      # handlebar
    pen.circle(0.82, 0.34, 0.07, 3)             # headlight


def _draw_car(pen: _Pen, rng) -> None:
    pen.poly([(0.2, 0.44), (0.3, 0.06), (0.7, 0.06), (0.84, 0.44)], 1)   # cabin
    pen.poly([(0.27, 0.42), (0.34, 0.13), (0.49, 0.13), (0.49, 0.42)], 2)  # windows
    pen.poly([(0.53, 0.42), (0.53, 0.13), (0.67, 0.13), (0.77, 0.42)], 2)
    pen.rect(0.02, 0.4, 0.98, 0.8, 1)                                     # body
    pen.circle(0.05, 0.5, 0.1, 1)
    pen.circle(0.95, 0.5, 0.1, 1)
    pen.circle(0.94, 0.5, 0.06, 3)                                        # headlight
    for u in (0.22, 0.78):
        pen.circle(u, 0.8, 0.2, 2)


def _draw_bus(pen: _Pen, rng) -> None:
    pen.rect(0.0, 0.04, 1.0, 0.86, 1)
    n = int(rng.integers(4, 7))
    for i in range(n):
        u0 = 0.05 + i * 0.9 / n
        pen.rect(u0, 0.14, u0 + 0.9 / n - 0.03, 0.42, 2)  # window row
    pen.rect(0.03, 0.48, 0.1, 0.82, 2)                  # door
    pen.rect(0.0, 0.56, 1.0, 0.62, 3)                   # trim stripe
    for u in (0.2, 0.8):
        pen.circle(u, 0.86, 0.14, 2)


def _draw_train(pen: _Pen, rng) -> None:
    cars = int(rng.integers(2, 4))
    length = 1.0 / cars
    for i in range(cars):
        u0, u1 = i * length + 0.01, (i + 1) * length - 0.01
        if i == cars - 1:  # the locomotive's sloped nose
            pen.poly([(u0, 0.1), (u1 - 0.1 * length, 0.1), (u1, 0.5), (u1, 0.85), (u0, 0.85)], 1)
            pen.poly([(u1 - 0.25 * length, 0.18), (u1 - 0.1 * length, 0.18), (u1 - 0.02 * length, 0.42),
                      (u1 - 0.25 * length, 0.42)], 2)
        else:
            pen.rect(u0, 0.1, u1, 0.85, 1)
        for k in range(3):
            a = u0 + (0.1 + 0.22 * k) * length
            pen.rect(a, 0.22, a + 0.14 * length, 0.42, 2)
        pen.rect(u0, 0.55, u1, 0.62, 3)
        pen.rect(u1 - 0.02, 0.55, u1 + 0.02, 0.7, 2)  # coupling
        for f in (0.2, 0.8):
            pen.circle(u0 + f * length, 0.9, 0.1, 2)


def _draw_aeroplane(pen: _Pen, rng) -> None:
    pen.poly([(0.42, 0.5), (0.28, 0.96), (0.4, 0.96), (0.62, 0.5)], 4)   # near wing
    pen.poly([(0.46, 0.45), (0.4, 0.16), (0.47, 0.16), (0.58, 0.45)], 4)  # far wing
    pen.poly([(0.03, 0.48), (0.0, 0.06), (0.09, 0.06), (0.2, 0.46)], 1)   # tail fin
    pen.ellipse(0.5, 0.48, 0.49, 0.1, 1)                                # fuselage
    pen.ellipse(0.9, 0.44, 0.05, 0.04, 3)                               # cockpit


def _draw_bird(pen: _Pen, rng) -> None:
    pen.poly([(0.22, 0.5), (0.0, 0.38), (0.02, 0.72), (0.25, 0.64)], 4)  # tail
    pen.ellipse(0.47, 0.56, 0.32, 0.25, 1)
    pen.circle(0.8, 0.34, 0.2, 1)
    pen.poly([(0.9, 0.28), (1.0, 0.36), (0.9, 0.42)], 3)               # beak
    if rng.random() < 0.5:                                             # a raised wing
        pen.poly([(0.35, 0.48), (0.62, 0.52), (0.3, 0.02)], 4)
    pen.line(0.42, 0.75, 0.4, 0.98, 0.05, 2)
    pen.line(0.55, 0.75, 0.57, 0.98, 0.05, 2)


def _draw_boat(pen: _Pen, rng) -> None:
    if rng.random() < 0.6:  # sailing boat
        pen.line(0.5, 0.04, 0.5, 0.64, 0.035, 2)
        pen.poly([(0.53, 0.06), (0.53, 0.58), (0.9, 0.58)], 3)
        pen.poly([(0.47, 0.14), (0.47, 0.58), (0.18, 0.58)], 3)
    else:                   # motor boat: a cabin instead
        pen.rect(0.3, 0.38, 0.7, 0.64, 3)
        pen.rect(0.35, 0.44, 0.65, 0.52, 2)
    pen.poly([(0.0, 0.62), (1.0, 0.62), (0.86, 0.92), (0.12, 0.92)], 1)


def _draw_bottle(pen: _Pen, rng) -> None:
    pen.rect(0.04, 0.36, 0.96, 0.97, 1)
    pen.ellipse(0.5, 0.97, 0.46, 0.02, 1)
    pen.poly([(0.04, 0.37), (0.34, 0.19), (0.66, 0.19), (0.96, 0.37)], 1)  # shoulder
    pen.rect(0.34, 0.05, 0.66, 0.21, 1)                                    # neck
    pen.rect(0.31, 0.0, 0.69, 0.07, 2)                                     # cap
    pen.rect(0.04, 0.55, 0.96, 0.8, 3)                                     # label


def _draw_chair(pen: _Pen, rng) -> None:
    for u, bottom in ((0.14, 1.0), (0.86, 1.0), (0.3, 0.94), (0.72, 0.94)):
        pen.line(u, 0.55, u, bottom, 0.07, 1)
    pen.rect(0.08, 0.48, 0.92, 0.58, 1)  # seat
    pen.rect(0.08, 0.0, 0.26, 0.52, 1)   # back
    pen.rect(0.11, 0.06, 0.23, 0.4, 4)   # back cushion or inlay


def _draw_sofa(pen: _Pen, rng) -> None:
    pen.rect(0.0, 0.08, 1.0, 0.55, 1)        # back
    pen.ellipse(0.5, 0.1, 0.5, 0.06, 1)
    pen.rect(0.08, 0.5, 0.92, 0.82, 4)       # seat cushions
    pen.line(0.5, 0.52, 0.5, 0.8, 0.03, 2)
    pen.rect(0.0, 0.3, 0.13, 0.86, 1)        # arm rests
    pen.rect(0.87, 0.3, 1.0, 0.86, 1)
    for u in (0.05, 0.95):
        pen.rect(u - 0.03, 0.86, u + 0.03, 1.0, 2)  # feet


def _draw_diningtable(pen: _Pen, rng) -> None:
    if rng.random() < 0.35:  # with a table cloth hanging down
        pen.rect(0.0, 0.28, 1.0, 0.7, 1)
        for u in (0.1, 0.9):
            pen.line(u, 0.7, u, 1.0, 0.07, 2)
    else:
        for u, bottom in ((0.07, 1.0), (0.93, 1.0), (0.25, 0.88), (0.75, 0.88)):
            pen.line(u, 0.34, u, bottom, 0.07, 4)
        pen.rect(0.03, 0.28, 0.97, 0.38, 4)   # apron
    pen.poly([(0.1, 0.08), (0.9, 0.08), (1.0, 0.3), (0.0, 0.3)], 1)  # top, seen from above


def _legs(pen: _Pen, us, top: float, thickness: float, part: int = 1, spread: float = 0.0) -> None:
    for i, u in enumerate(us):
        lean = spread * (1 if i % 2 else -1)
        pen.line(u, top, u + lean, 1.0, thickness, part)


def _draw_cow(pen: _Pen, rng) -> None:
    _legs(pen, (0.2, 0.3, 0.64, 0.74), 0.5, 0.12, 1, rng.uniform(0, 0.04))
    pen.rect(0.15, 0.2, 0.78, 0.62, 1)                                    # boxy body
    pen.ellipse(0.46, 0.41, 0.33, 0.23, 1)
    pen.poly([(0.74, 0.22), (0.92, 0.26), (1.0, 0.56), (0.88, 0.6)], 1)  # head
    pen.line(0.86, 0.25, 0.83, 0.12, 0.04, 3)                             # horns
    pen.line(0.9, 0.26, 0.95, 0.14, 0.04, 3)
    pen.ellipse(0.95, 0.55, 0.04, 0.05, 3)                                # muzzle
    pen.line(0.15, 0.28, 0.07, 0.72, 0.03, 1)                             # tail


def _draw_horse(pen: _Pen, rng) -> None:
    _legs(pen, (0.22, 0.3, 0.62, 0.7), 0.45, 0.07, 1, rng.uniform(0, 0.08))
    pen.ellipse(0.46, 0.42, 0.3, 0.17, 1)
    pen.poly([(0.64, 0.33), (0.78, 0.04), (0.88, 0.08), (0.8, 0.46)], 1)  # neck
    pen.poly([(0.77, 0.04), (0.9, 0.0), (1.0, 0.24), (0.93, 0.28)], 1)    # head
    pen.line(0.7, 0.3, 0.8, 0.04, 0.05, 2)                                # mane
    pen.poly([(0.17, 0.33), (0.06, 0.72), (0.12, 0.74), (0.2, 0.4)], 2)   # tail


def _draw_dog(pen: _Pen, rng) -> None:
    _legs(pen, (0.22, 0.3, 0.6, 0.68), 0.5, 0.1, 1, rng.uniform(0, 0.05))
    pen.ellipse(0.45, 0.5, 0.3, 0.19, 1)
    pen.line(0.17, 0.45, 0.06, 0.2 + rng.uniform(-0.05, 0.2), 0.06, 1)  # tail, up
    pen.circle(0.78, 0.3, 0.2, 1)
    pen.ellipse(0.92, 0.36, 0.08, 0.07, 1)                                # snout
    pen.ellipse(0.97, 0.33, 0.025, 0.03, 2)                               # nose
    pen.ellipse(0.72, 0.33, 0.05, 0.13, 2, angle=20)                      # droopy ear


def _draw_cat(pen: _Pen, rng) -> None:
    pen.polyline([(0.18, 0.6), (0.06, 0.48), (0.08, 0.18)], 0.07, 1)      # tail curling up
    _legs(pen, (0.25, 0.33, 0.58, 0.66), 0.65, 0.09, 1)
    pen.ellipse(0.45, 0.62, 0.3, 0.2, 1)
    pen.poly([(0.66, 0.3), (0.68, 0.06), (0.76, 0.24)], 1)                # ears, pointed
    pen.poly([(0.8, 0.24), (0.9, 0.06), (0.92, 0.3)], 1)
    pen.circle(0.79, 0.4, 0.22, 1)
    pen.ellipse(0.75, 0.36, 0.02, 0.03, 3)                                # eyes
    pen.ellipse(0.85, 0.36, 0.02, 0.03, 3)


def _draw_sheep(pen: _Pen, rng) -> None:
    _legs(pen, (0.25, 0.33, 0.62, 0.7), 0.6, 0.06, 2)
    for _ in range(9):  # fleece: a cluster of puffs
        pen.ellipse(rng.uniform(0.25, 0.68), rng.uniform(0.3, 0.55), rng.uniform(0.1, 0.16),
                    rng.uniform(0.12, 0.2), 1)
    pen.ellipse(0.86, 0.38, 0.09, 0.14, 3, angle=-25)                    # dark face
    pen.ellipse(0.8, 0.27, 0.05, 0.03, 3)                                # ear


def _draw_pottedplant(pen: _Pen, rng) -> None:
    for _ in range(int(rng.integers(6, 10))):  # foliage
        u, v = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.5)
        pen.ellipse(u, v, rng.uniform(0.1, 0.22), rng.uniform(0.06, 0.14), 1, angle=float(rng.uniform(0, 180)))
    pen.line(0.5, 0.6, 0.5, 0.3, 0.05, 1)
    pen.poly([(0.25, 0.62), (0.75, 0.62), (0.68, 1.0), (0.32, 1.0)], 3)  # pot
    pen.rect(0.22, 0.58, 0.78, 0.66, 3)


def _draw_tvmonitor(pen: _Pen, rng) -> None:
    pen.rect(0.0, 0.0, 1.0, 0.82, 1)          # frame
    pen.rect(0.07, 0.07, 0.93, 0.75, 3)       # screen (part of the object, as in VOC)
    pen.rect(0.45, 0.8, 0.55, 0.93, 1)        # stand
    pen.rect(0.28, 0.92, 0.72, 1.0, 1)


SHAPES = {name: globals()[f"_draw_{name}"] for name in VOC_CLASSES[1:]}


def draw_object(rng: np.random.Generator, p: _Placement) -> _Drawn:
    """Draw one object's parts on a square local canvas large enough for any rotation."""
    radius = 0.5 * math.hypot(p.w, p.h) + 0.15 * max(p.w, p.h) + 2
    x0, y0 = int(math.floor(p.cx - radius)), int(math.floor(p.cy - radius))
    size = int(math.ceil(2 * radius)) + 2
    canvas = np.zeros((size, size), np.uint8)
    SHAPES[p.name](_Pen(canvas, p, p.cx - x0, p.cy - y0), rng)
    return _Drawn(p.name, x0, y0, canvas, p)


def _overlap(d: _Drawn, h: int, w: int) -> tuple[slice, slice, slice, slice]:
    """(image rows, image cols, canvas rows, canvas cols) where the canvas lies on the image."""
    s = d.parts.shape[0]
    ix0, iy0 = max(0, d.x0), max(0, d.y0)
    ix1, iy1 = min(w, d.x0 + s), min(h, d.y0 + s)
    return (slice(iy0, max(iy0, iy1)), slice(ix0, max(ix0, ix1)),
            slice(iy0 - d.y0, max(iy0, iy1) - d.y0), slice(ix0 - d.x0, max(ix0, ix1) - d.x0))


# -- step 5 and 7: composition and labels --------------------------------------------------------
def void_band_width(h: int, w: int) -> int:
    """VOC's void band is about 5 px at 500 px: 1% of the image size, at least 2 px."""
    return max(2, int(round(0.01 * max(h, w))))


def void_band(instances: np.ndarray, width: int) -> np.ndarray:
    """Pixels within about width/2 of a change of instance id (object-background and
    object-object borders alike). Max and min filters differ exactly where a window holds more
    than one id; the image border does not count (OpenCV pads morphology neutrally)."""
    # A (2r+1)-wide window marks r pixels on each side of a border: a band 2r wide.
    r = max(1, width // 2)
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    return cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)


def compose(drawn: list[_Drawn], h: int, w: int) -> np.ndarray:
    """(H, W) uint8 instance ids 1..n in paint order, 0 background, no void."""
    instances = np.zeros((h, w), np.uint8)
    for k, d in enumerate(drawn, start=1):
        rows, cols, crows, ccols = _overlap(d, h, w)
        instances[rows, cols][d.parts[crows, ccols] > 0] = k
    return instances


def _own_in_image(d: _Drawn, h: int, w: int) -> int:
    rows, cols, crows, ccols = _overlap(d, h, w)
    return int(np.count_nonzero(d.parts[crows, ccols]))


def drop_hidden(drawn: list[_Drawn], h: int, w: int, band: int) -> tuple[list[_Drawn], int]:
    """Remove objects an annotator could not label (mostly covered, or a few pixels inside the
    void band), the worst first, until all remaining ones are visible. Returns (kept, dropped)."""
    kept, dropped = list(drawn), 0
    while kept:
        instances = compose(kept, h, w)
        solid = np.where(void_band(instances, band), 0, instances)
        visible = np.bincount(instances.ravel(), minlength=len(kept) + 1)[1:]
        solid_px = np.bincount(solid.ravel(), minlength=len(kept) + 1)[1:]
        own = np.array([max(1, _own_in_image(d, h, w)) for d in kept])
        fraction = visible / own
        bad = (fraction < MIN_VISIBLE_FRACTION) | (solid_px < MIN_VISIBLE_PIXELS)
        if not bad.any():
            break
        worst = int(np.argmin(np.where(bad, fraction, np.inf)))
        kept.pop(worst)
        dropped += 1
    return kept, dropped


def annotate(drawn: list[_Drawn], instances: np.ndarray) -> list[SampleObject]:
    """VOC XML facts per object: visible bbox (1-based, inclusive), truncated, occluded."""
    h, w = instances.shape
    objects = []
    for k, d in enumerate(drawn, start=1):
        ys, xs = np.nonzero(instances == k)
        own = _own_in_image(d, h, w)
        covered = own - len(xs)
        objects.append(SampleObject(
            name=d.name,
            bbox=(int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1),
            truncated=own < int(np.count_nonzero(d.parts)),
            occluded=covered >= OCCLUDED_FRACTION * own,
        ))
    return objects


# -- step 6: appearance --------------------------------------------------------------------------
def _texture(rng, kind: str, period: float, angle: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A pattern in about [-1, 1] over pixel coordinates ``xs``, ``ys`` of the object's region."""
    if kind == "plain":
        return np.zeros_like(xs)
    period *= rng.uniform(0.8, 1.25)
    a = math.radians(angle + rng.normal(0, 8))
    phase = rng.uniform(0, 2 * np.pi)
    along = (xs * math.cos(a) + ys * math.sin(a)) * 2 * np.pi / period + phase
    across = (-xs * math.sin(a) + ys * math.cos(a)) * 2 * np.pi / period + phase
    if kind == "stripes":
        return np.sin(along)
    if kind == "checker":
        return np.sign(np.sin(along) * np.sin(across))
    if kind == "dots":
        return np.where(np.cos(along) * np.cos(across) > 0.4, 1.0, -0.3).astype(np.float32)
    h, w = xs.shape
    noise = _smooth_noise(rng, h, w, period)
    if kind == "patches":  # piebald coats: large dark blotches on the main colour
        return np.where(noise > 0.25, -1.0, 0.0).astype(np.float32)
    if kind == "noise":
        return noise / max(1e-6, float(np.abs(noise).max()))
    raise ValueError(f"unknown texture {kind!r}")


def paint_object(rng: np.random.Generator, image: np.ndarray, d: _Drawn) -> None:
    """Colour the object's visible-or-not parts into ``image`` (float32 RGB), in place."""
    h, w = image.shape[:2]
    rows, cols, crows, ccols = _overlap(d, h, w)
    parts = d.parts[crows, ccols]
    colours, accent, textures = LOOKS[d.name]
    main = _jitter(rng, colours[rng.integers(len(colours))]) * rng.uniform(0.75, 1.15)
    second = _jitter(rng, colours[rng.integers(len(colours))]) * rng.uniform(0.75, 1.15)
    dark = _jitter(rng, (35, 33, 35), 8)
    accent = _jitter(rng, accent, 12)
    if d.name == "person":
        accent *= rng.uniform(0.45, 1.05)  # skin tones
    kind, period, angle, amp = textures[rng.integers(len(textures))]
    yy, xx = np.mgrid[rows, cols].astype(np.float32)
    tex = _texture(rng, kind, period, angle, xx, yy)[..., None]  # (h, w, 1)
    # Light from one side: a gentle gradient across the object gives it volume.
    light = rng.uniform(0, 2 * np.pi)
    p = d.placement
    shade = 1 + 0.15 * ((xx - p.cx) * math.cos(light) + (yy - p.cy) * math.sin(light))[..., None] / max(p.w, p.h)
    if kind == "patches":
        body = np.where(tex < 0, dark * 1.2, main) * shade
        secondary = np.where(tex < 0, dark * 1.2, second) * shade
    else:
        body = main * (1 + amp * tex) * shade
        secondary = second * (1 + amp * tex) * shade
    layers = {1: body, 2: dark * (1 + 0.3 * amp * tex) * shade, 3: accent * shade, 4: secondary}
    region = image[rows, cols]
    for part, layer in layers.items():
        mask = parts == part
        region[mask] = np.broadcast_to(layer, region.shape)[mask]


def _camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Slight optical blur and sensor noise; then 8 bits."""
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.8))
    image = image * rng.uniform(0.85, 1.1) + rng.normal(0, 3.0, image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# -- one image -----------------------------------------------------------------------------------
def render_sample(rng: np.random.Generator, min_size: int, max_size: int, object_scale: float = 1.0) -> Sample:
    """Draw one image and its annotations from the generative model (pure; no files)."""
    w = int(rng.integers(min_size, max_size + 1))
    h = int(rng.integers(min_size, max_size + 1))
    band = void_band_width(h, w)
    dropped = 0
    while True:  # an image whose every object got dropped is drawn again (rare)
        classes = sample_classes(rng)
        placements = place_objects(rng, classes, h, w, object_scale)
        order = paint_order(rng, placements, h)
        drawn = [draw_object(rng, placements[i]) for i in order]
        drawn, n_dropped = drop_hidden(drawn, h, w, band)
        dropped += n_dropped
        if drawn:
            break
    scene = sample_scene(rng, [d.name for d in drawn])
    image = BACKGROUNDS[scene](rng, h, w).astype(np.float32)
    for d in drawn:
        paint_object(rng, image, d)
    instances = compose(drawn, h, w)
    objects = annotate(drawn, instances)
    lut = np.zeros(256, np.uint8)
    lut[1:len(drawn) + 1] = [CLASS_ID[d.name] for d in drawn]
    label = lut[instances]
    void = void_band(instances, band)
    label[void] = IGNORE_INDEX
    instances[void] = IGNORE_INDEX
    return Sample(_camera(rng, image), label, instances, objects, scene, dropped)


# -- files ---------------------------------------------------------------------------------------
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


def _run(work, tasks: list, workers: int):
    """Results of ``work`` over ``tasks`` in task order, in this process or in a pool. Every
    image draws from its own generator, so the order of execution does not matter."""
    if workers == 1:
        yield from map(work, tasks)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(work, tasks, chunksize=8)


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


def fresh_partial_dir(out: Path) -> Path:
    """``<out>.partial``, empty, to generate into and rename to ``out`` when complete.
    FileExistsError if ``out`` exists and is not empty; a killed run's leftover is removed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not empty; remove it or choose another --out")
    partial_dir = out.parent / (out.name + ".partial")
    if partial_dir.exists():  # left by a killed run; it was never complete
        shutil.rmtree(partial_dir)
    return partial_dir


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
