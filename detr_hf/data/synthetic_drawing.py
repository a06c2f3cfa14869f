"""Drawing for the synthetic shapes dataset (:mod:`.synthetic`): shape outlines rasterized anti-aliased, textured
backgrounds, and fill patterns. Every function draws from the generator it is given, so images are reproducible."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

# Shapes are drawn on a canvas this many times finer than the image, then area-averaged: anti-aliased edges.
_SUPERSAMPLE = 4


# ----------------------------------------------------------------------------------------------------------- shapes
def _regular_polygon(sides: int, start: float) -> np.ndarray:
    angles = start + 2 * math.pi * np.arange(sides) / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int, inner: float) -> np.ndarray:
    angles = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(arm: float) -> np.ndarray:
    a = arm
    return np.array(
        [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]],
        dtype=np.float64,
    )


# Unit outlines (any scale; they are normalized when drawn). ``None`` marks the circle, drawn as an ellipse.
OUTLINES: dict[str, np.ndarray | None] = {
    "circle": None,
    "square": _regular_polygon(4, math.pi / 4),
    "triangle": _regular_polygon(3, -math.pi / 2),
    "pentagon": _regular_polygon(5, -math.pi / 2),
    "hexagon": _regular_polygon(6, 0.0),
    "star": _star(5, 0.45),
    "cross": _cross(0.33),
}
AVAILABLE_SHAPES: tuple[str, ...] = tuple(OUTLINES)


def shape_alpha(name: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """Coverage in [0, 1] of one shape whose bounding box has longest side ``size`` px, randomly rotated.

    The array is the shape's full extent plus a 1 px margin; the shape sits at a random sub-pixel offset in it.
    """
    outline = OUTLINES[name]
    s = _SUPERSAMPLE
    offset = rng.uniform(0.0, 1.0, size=2)  # sub-pixel position, in image pixels
    if outline is None:
        extent = np.array([size, size])
    else:
        angle = rng.uniform(0.0, 2 * math.pi)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        points = outline @ rotation.T
        points -= points.min(axis=0)
        points *= size / points.max()
        extent = points.max(axis=0)
    width, height = (math.ceil(e + o) + 2 for e, o in zip(extent, offset))
    canvas = np.zeros((height * s, width * s), dtype=np.uint8)
    origin = (offset + 1.0) * s  # 1 px margin keeps the anti-aliased edge inside the canvas
    if outline is None:
        radius = size * s / 2
        center = origin + radius
        cv2.ellipse(
            canvas,
            (round(center[0] * 16), round(center[1] * 16)),
            (round(radius * 16),) * 2,
            0,
            0,
            360,
            255,
            thickness=-1,
            lineType=cv2.LINE_8,
            shift=4,
        )
    else:
        pts = np.round((points * s + origin) * 16).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_8, shift=4)
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------------------------ backgrounds
def random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=3).astype(np.float32)


def _coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))


def _blend(t: np.ndarray, color_a: np.ndarray, color_b: np.ndarray) -> np.ndarray:
    """Per-pixel mix of two colours by ``t`` in [0, 1], shape (H, W, 3)."""
    return color_a + t[..., None] * (color_b - color_a)


def _value_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    cells = int(rng.integers(2, 10))
    grid = rng.uniform(0.0, 255.0, size=(cells, cells, 3)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    xs, ys = _coords(height, width)
    angle = rng.uniform(0.0, 2 * math.pi)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    return _blend(t, random_color(rng), random_color(rng))


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    xs, ys = _coords(height, width)
    angle = rng.uniform(0.0, math.pi)
    period = rng.uniform(4.0, 28.0)
    sharpness = rng.uniform(1.0, 6.0)  # 1: soft sine, 6: nearly hard-edged bars
    wave = np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period + rng.uniform(0, 2 * math.pi))
    t = 0.5 + 0.5 * np.tanh(sharpness * wave) / math.tanh(sharpness)
    return _blend(t, random_color(rng), random_color(rng))


def _blotches(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[:] = random_color(rng)
    scale = max(height, width)
    for _ in range(int(rng.integers(6, 26))):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.uniform(0.04, 0.3) * scale), int(rng.uniform(0.04, 0.3) * scale))
        cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, random_color(rng).tolist(), -1)
    sigma = rng.uniform(3.0, 6.0)  # blurred enough never to pass for a shape
    return cv2.GaussianBlur(canvas, (0, 0), sigma)


_BACKGROUNDS: tuple[Callable[[np.random.Generator, int, int], np.ndarray], ...] = (
    _value_noise,
    _gradient,
    _stripes,
    _blotches,
)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    layers = [_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))](rng, height, width)]
    if rng.random() < 0.5:
        second = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))](rng, height, width)
        layers[0] = layers[0] + rng.uniform(0.25, 0.6) * (second - layers[0])
    canvas = np.ascontiguousarray(layers[0])
    # Thin unlabelled clutter: edges that are not objects.
    for _ in range(int(rng.integers(0, 6))):
        start = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(canvas, start, end, random_color(rng).tolist(), int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    return canvas


# ------------------------------------------------------------------------------------------------------------ fills
def fill(rng: np.random.Generator, color: np.ndarray, height: int, width: int) -> np.ndarray:
    """The texture of one shape: solid (50 %), a linear gradient (30 %) or stripes (20 %) around ``color``."""
    style = rng.random()
    if style < 0.5:
        return np.broadcast_to(color, (height, width, 3))
    other = np.clip(color + rng.uniform(-70.0, 70.0, size=3), 0, 255).astype(np.float32)
    xs, ys = _coords(height, width)
    angle = rng.uniform(0.0, 2 * math.pi)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    if style < 0.8:
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    else:
        t = (np.sin(2 * math.pi * t / rng.uniform(3.0, 9.0)) > 0).astype(np.float32)
    return _blend(t, color, other)


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
