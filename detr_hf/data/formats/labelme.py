"""LabelMe JSON: one file per image with ``shapes``; rectangles are boxes, polygons/circles/masks their enclosing box.

The image is the file ``imagePath`` names (found as for every format); when there is none, the base64 ``imageData``
the JSON embeds is used (read again when the dataset is written, so it is never held for the whole dataset).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..report import DatasetValidationError
from .base import ReadContext, SourceData, SourceImage, SourceObject, UnsupportedShapeError, walk_files
from .geometry import points_bounds

NAME = "labelme"
_BOX_SHAPES = {"rectangle", "polygon", "circle", "mask"}


def looks_like_labelme(path: str | Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode("utf-8", errors="ignore")
    if '"shapes"' in head:
        return True
    if '"imageData"' in head or '"imagePath"' in head:  # keys may follow a long base64 block
        try:
            data = json.loads(Path(path).read_text())
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(data, dict) and "shapes" in data
    return False


def find_files(root: Path) -> list[str]:
    return [p for p in walk_files(root, ".json") if looks_like_labelme(p)]


def shape_box(shape: dict) -> tuple[tuple[float, float, float, float], str]:
    """A shape's enclosing box and its type; raises ``ValueError`` for unreadable or non-box shapes."""
    kind = shape.get("shape_type") or "polygon"
    points = shape.get("points") or []
    if kind not in _BOX_SHAPES:
        raise UnsupportedShapeError(kind)
    if kind == "circle":
        if len(points) != 2:
            raise ValueError(f"a circle needs 2 points (centre, rim), got {len(points)}")
        (cx, cy), (px, py) = ((float(p[0]), float(p[1])) for p in points)
        r = math.hypot(px - cx, py - cy)
        return (cx - r, cy - r, cx + r, cy + r), kind
    needed = 2 if kind in ("rectangle", "mask") else 3
    if len(points) < needed:
        raise ValueError(f"a {kind} needs at least {needed} points, got {len(points)}")
    return points_bounds(points), kind


def read_file(path: Path, ctx: ReadContext) -> SourceImage | None:
    ann_file = ctx.rel(path)
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        ctx.issue("malformed", ann_file, "", f"not valid JSON ({e}); file skipped")
        return None
    name = str(data.get("imagePath") or "").replace("\\", "/") or path.with_suffix(".jpg").name
    w, h = data.get("imageWidth"), data.get("imageHeight")
    size = (int(w), int(h)) if w and h else None
    image = ctx.make_image(name, ann_file, base_dirs=(path.parent,), declared_size=size)
    if image.path is None:
        image.file_name = ctx.file_name(path.parent / name)
        if data.get("imageData"):
            image.embedded_in = os.path.abspath(path)
            image.stat = ctx.stat(path)
    for k, shape in enumerate(data.get("shapes") or [], start=1):
        record = f"shape {k}"
        label = str(shape.get("label") or "").strip()
        try:
            if not label:
                raise ValueError("no label")
            box, kind = shape_box(shape)
        except UnsupportedShapeError as e:
            ctx.issue("unsupported_shape", ann_file, record, f"{e} {label!r} is not a box or polygon", boxes_lost=1)
            continue
        except (ValueError, TypeError, IndexError) as e:
            ctx.issue("malformed", ann_file, record, f"unreadable shape: {e}", boxes_lost=1)
            continue
        if kind != "rectangle":
            ctx.issue("shape_to_box", ann_file, record, f"{kind} read as its enclosing box")
        image.objects.append(SourceObject(name=label, box=box, record=record))
    return image


def read(ctx: ReadContext) -> SourceData:
    files = find_files(ctx.root)
    if not files:
        raise DatasetValidationError(f"{ctx.root}: no LabelMe JSON file (with 'shapes') found")
    return SourceData(images=(image for p in files if (image := read_file(Path(p), ctx)) is not None))
