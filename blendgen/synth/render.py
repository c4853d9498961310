"""One made-up image and its annotations: backgrounds, composition and labels, appearance,
camera (steps 1, 3 and 5 to 8 of :mod:`blendgen.synth.model`). Pure; no files."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..datasets.classes import IGNORE_INDEX
from .model import (
    CLASS_ID, LOOKS, MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS, OCCLUDED_FRACTION, sample_classes, sample_scene,
)
from .shapes import _Drawn, draw_object, paint_order, place_objects


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


# -- step 5 and 7: composition and labels --------------------------------------------------------
def _overlap(d: _Drawn, h: int, w: int) -> tuple[slice, slice, slice, slice]:
    """(image rows, image cols, canvas rows, canvas cols) where the canvas lies on the image."""
    s = d.parts.shape[0]
    ix0, iy0 = max(0, d.x0), max(0, d.y0)
    ix1, iy1 = min(w, d.x0 + s), min(h, d.y0 + s)
    return (slice(iy0, max(iy0, iy1)), slice(ix0, max(ix0, ix1)),
            slice(iy0 - d.y0, max(iy0, iy1) - d.y0), slice(ix0 - d.x0, max(ix0, ix1) - d.x0))


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


