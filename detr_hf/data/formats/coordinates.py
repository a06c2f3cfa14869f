"""Coordinates as annotation files write them: the conventions the format readers turn into ``xyxy`` corners.

Every reader turns its source's convention into ``xyxy`` corners in continuous pixel coordinates (the top-left corner
of the image is (0, 0), the bottom-right corner is (width, height)); the dataset stores COCO ``xywh``. Here: numbers
as label files write them, VOC's 1-based pixels, polygons and rotated boxes to their enclosing box, fractions to
pixels, boxes moved by an EXIF transpose, clipping. The plain box conversions (``xywh_to_xyxy``, ...) are
``detr_hf.box_ops``'s, for one box as for a tensor of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ...box_ops import Box, xyxy_to_cxcywh


def voc_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float, one_based: bool = True) -> Box:
    """Pascal VOC corners to continuous pixel corners.

    VOC numbers pixels from 1 and its boxes include both end pixels, so pixel ``xmin`` starts at ``xmin - 1`` and
    pixel ``xmax`` ends at ``xmax``: a box over the whole image is ``1..W`` and becomes ``[0, W]``.
    ``one_based=False`` reads files whose tool wrote continuous 0-based corners (CVAT/Datumaro exports).
    """
    if one_based:
        return (xmin - 1, ymin - 1, xmax, ymax)
    return (xmin, ymin, xmax, ymax)


def xyxy_to_voc(box: Box, one_based: bool = True) -> Box:
    """Inverse of :func:`voc_to_xyxy`."""
    x0, y0, x1, y1 = box
    return (x0 + 1, y0 + 1, x1, y1) if one_based else box


def points_bounds(points: Iterable[Sequence[float]]) -> Box:
    """Enclosing box of ``(x, y)`` points (a polygon, a LabelMe rectangle's two corners in any order)."""
    xs, ys = [], []
    for p in points:
        xs.append(float(p[0]))
        ys.append(float(p[1]))
    if not xs:
        raise ValueError("no points")
    return (min(xs), min(ys), max(xs), max(ys))


def flat_points_bounds(coords: Sequence[float]) -> Box:
    """Enclosing box of a flat ``[x0, y0, x1, y1, ...]`` polygon (COCO segmentation, YOLO segment labels)."""
    if len(coords) < 2 or len(coords) % 2:
        raise ValueError(f"a polygon needs an even number of coordinates, got {len(coords)}")
    return points_bounds(zip(coords[0::2], coords[1::2]))


def rotated_box_bounds(box: Box, degrees: float) -> Box:
    """Enclosing axis-aligned box of ``box`` rotated by ``degrees`` about its centre (CVAT's ``rotation``)."""
    if not degrees:
        return box
    cx, cy, w, h = xyxy_to_cxcywh(box)
    t = math.radians(degrees)
    half_w = (abs(w * math.cos(t)) + abs(h * math.sin(t))) / 2
    half_h = (abs(w * math.sin(t)) + abs(h * math.cos(t))) / 2
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def scale_box(box: Box, sx: float, sy: float) -> Box:
    """Normalized corners to pixels (YOLO, Open Images)."""
    x0, y0, x1, y1 = box
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def exif_transpose_box(box: Box, orientation: int, width: int, height: int) -> Box:
    """Move a box drawn on the stored pixels (``width`` x ``height``) to the image ``ImageOps.exif_transpose`` shows.

    Each orientation maps a point of the stored image to the displayed one; the box's corners are mapped and
    re-sorted, because a rotation swaps which corner is the top-left one.
    """
    w, h = width, height
    maps = {
        1: lambda x, y: (x, y),
        2: lambda x, y: (w - x, y),  # mirrored horizontally
        3: lambda x, y: (w - x, h - y),  # rotated 180
        4: lambda x, y: (x, h - y),  # mirrored vertically
        5: lambda x, y: (y, x),  # transposed
        6: lambda x, y: (h - y, x),  # shown turned 90 clockwise
        7: lambda x, y: (h - y, w - x),  # transversed
        8: lambda x, y: (y, w - x),  # shown turned 90 counter-clockwise
    }
    if orientation not in maps:
        return box
    x0, y0, x1, y1 = box
    ax, ay = maps[orientation](x0, y0)
    bx, by = maps[orientation](x1, y1)
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


def clip_box(box: Box, width: float, height: float) -> Box:
    x0, y0, x1, y1 = box
    return (
        min(max(x0, 0.0), width),
        min(max(y0, 0.0), height),
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
    )


def is_finite_box(box: Sequence[float]) -> bool:
    return len(box) == 4 and all(math.isfinite(v) for v in box)


def parse_number(text: str | float | int | None) -> float:
    """A float from a label file, accepting a decimal comma (``"0,358"``, as some CSV exports write)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    if text is None:
        raise ValueError("missing number")
    s = str(text).strip()
    if "," in s and "." not in s:
        s = s.replace(",", ".")
    return float(s)


def parse_size(width: str | float | None, height: str | float | None) -> tuple[int, int] | None:
    """A declared image size ``(width, height)``; None when either is missing, not a number, not finite or not positive
    (the image file then tells the size)."""
    try:
        w, h = parse_number(width), parse_number(height)
    except ValueError:
        return None
    if not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        return None
    return int(w), int(h)


def parse_flag(value: str | float | bool | None) -> int | None:
    """A 0/1 flag (``iscrowd``, ``difficult``, ...) as files write it: 0/1, "0"/"1", 0.0/1.0, booleans; missing or
    empty is 0. None for any other value, which the reader reports."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    if isinstance(value, bool):
        return int(value)
    try:
        number = parse_number(value)
    except (ValueError, TypeError):
        return None
    return int(number) if number in (0, 1) else None


def format_number(value: float) -> str:
    """Shortest text for a coordinate: ``174`` rather than ``174.0``, and no float noise."""
    rounded = round(value, 6)
    return str(int(rounded)) if rounded == int(rounded) else repr(rounded)
