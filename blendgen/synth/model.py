"""The generative model of the made-up VOC scenes, as data, and its draws of classes and scene.


Why a miniature: the papers' evaluations (co-occurrence clusters, "co-occur with person" vs
"exclusive", object-pair frequency subsets, 1-Occ/All-Occ) only mean something if the data has
VOC's *structure*: a skewed class prior, classes that come in groups, occlusions, truncation, a
void band. Real VOC cannot ship with the project, so this package draws that structure from an
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

:mod:`blendgen.synth.shapes` places and outlines the objects (steps 4 and 6),
:mod:`blendgen.synth.render` paints one image and its labels (steps 1, 3 and 5 to 8).
"""

from __future__ import annotations

import numpy as np

from ..datasets.classes import VOC_CLASSES

CLASS_ID = {name: i for i, name in enumerate(VOC_CLASSES)}

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

