"""Where each object of a made-up scene stands and the parts it is drawn with (steps 4 and 6 of
:mod:`blendgen.synth.model`): a box per object, a paint order, and each class's outline as part
numbers on a local canvas."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..datasets.classes import VOC_CLASSES
from .model import ASPECT, NEAR_P, REL_SIZE


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

