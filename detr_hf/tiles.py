"""Tile windows and what a window does to boxes: the geometry tiled training and sliced inference share.

A grid of ``tile_size`` windows overlapping by ``overlap`` (a fraction of the tile) covers an image; the last window
of a row or column is moved back to end at the image's edge, so every window has the full tile size (an image smaller
than a tile is one window, the image itself). Boxes are ``xyxy`` in image pixels.
"""

from __future__ import annotations

import math

import numpy as np

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(k * stride, length - tile) for k in range(count)})


def tile_windows(width: int, height: int, tile_size: int | tuple[int, int] = 512, overlap: float = 0.2) -> list[Window]:
    """The windows ``(x0, y0, x1, y1)`` covering a ``width`` x ``height`` image, row by row.

    ``tile_size`` is a side or ``(width, height)``; ``overlap`` in ``[0, 1)`` is the fraction of a tile two
    neighbours share (at least: the last window of a row or column is shifted back to the image's edge).
    """
    tile_w, tile_h = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    if tile_w < 1 or tile_h < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if width < 1 or height < 1:
        raise ValueError(f"the image must have pixels, got {width}x{height}")
    stride_x = max(1, round(tile_w * (1 - overlap)))
    stride_y = max(1, round(tile_h * (1 - overlap)))
    xs, ys = _starts(width, tile_w, stride_x), _starts(height, tile_h, stride_y)
    return [(x, y, min(x + tile_w, width), min(y + tile_h, height)) for y in ys for x in xs]


def clip_to_window(boxes: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """``boxes`` (N, 4) xyxy clipped to ``window`` and moved to its coordinates, and the share of each box's area
    inside it, (N,) in [0, 1] (a degenerate box counts as inside when its clipped extent is not empty)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = window
    clipped = np.stack(
        [boxes[:, 0].clip(x0, x1), boxes[:, 1].clip(y0, y1), boxes[:, 2].clip(x0, x1), boxes[:, 3].clip(y0, y1)],
        axis=1,
    )
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]).clip(min=0) * (clipped[:, 3] - clipped[:, 1]).clip(min=0)
    visible = np.divide(inside, area, out=np.zeros_like(inside), where=area > 0)
    return clipped - np.array([x0, y0, x0, y0], dtype=np.float64), visible
