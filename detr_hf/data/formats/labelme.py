"""LabelMe JSON: one file per image with ``shapes``; rectangles are boxes, polygons/circles/masks their enclosing box.

The image is the file ``imagePath`` names (found as for every format); when there is none, the base64 ``imageData``
the JSON embeds is used (read again when the dataset is written, so it is never held for the whole dataset).

Shapes that share a label and a ``group_id`` are one object drawn in pieces (LabelMe's instance segmentation: a sofa
cut in four by a person in front of it): they become one box, the union of their bounds. Shapes labelled
``__ignore__`` (the first line of LabelMe's ``labels.txt``) mark regions to ignore: they become crowd regions
(``iscrowd=1``) named :data:`IGNORE_LABEL`, never a class. ``_background_`` is left as it is: LabelMe's own COCO and
VOC exporters write such a shape as an object of that class, so it stays one here too.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..schema import Category
from .base import (
    IGNORE_ALL_CLASSES,
    ReadContext,
    SourceData,
    SourceImage,
    SourceObject,
    UnsupportedShapeError,
    json_problem,
    no_files_error,
    report_rejected,
    walk_files,
)
from .coco import looks_like_coco
from .coordinates import points_bounds

NAME = "labelme"
ALIASES: tuple[str, ...] = ()
IGNORE_LABEL = IGNORE_ALL_CLASSES
_BOX_SHAPES = {"rectangle", "polygon", "circle", "mask"}


def looks_like_labelme(path: str | Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode("utf-8", errors="ignore")
    if '"shapes"' in head:
        return True
    if '"imageData"' in head or '"imagePath"' in head:  # keys may follow a long base64 block
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError, RecursionError):
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


@dataclass
class _Object:
    """One object while a file is read: its label, the union of its shapes' bounds, and which shapes they were."""

    label: str
    box: tuple[float, float, float, float]
    shapes: list[int] = field(default_factory=list)

    def add(self, box: tuple[float, float, float, float], k: int) -> None:
        self.box = points_bounds([self.box[:2], self.box[2:], box[:2], box[2:]])
        self.shapes.append(k)

    @property
    def record(self) -> str:
        return f"shape {self.shapes[0]}" if len(self.shapes) == 1 else f"shapes {', '.join(map(str, self.shapes))}"


def _group_key(label: str, group_id: object) -> tuple[str, str] | None:
    """Shapes with the same key are one object; ``None`` (no ``group_id``) means the shape stands alone."""
    if group_id is None:
        return None
    return label, json.dumps(group_id, sort_keys=True)


def _declared_size(data: dict) -> tuple[int, int] | None:
    try:
        w, h = int(data.get("imageWidth") or 0), int(data.get("imageHeight") or 0)
    except (TypeError, ValueError, OverflowError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def _file_name_here(name: str, path: Path, ann_file: str, ctx: ReadContext) -> str:
    """The ``file_name`` of an image not found on disk: ``imagePath`` beside the JSON, or, when that leaves the
    dataset folder (``../x.png``, ``C:/x.png``), the JSON's own name with the image's suffix (a ``path_relocated``
    fix)."""
    if not re.match(r"^(/|[A-Za-z]:)", name):
        candidate = os.path.normpath(path.parent / name)
        if ctx.is_inside(candidate):
            return ctx.file_name(candidate)
    suffix = PurePosixPath(name).suffix or ".jpg"
    safe = ctx.file_name(path.with_suffix(suffix))
    ctx.issue("path_relocated", ann_file, "imagePath", f"{name!r} leaves the dataset folder: named {safe!r} instead")
    return safe


def read_file(path: Path, ctx: ReadContext) -> SourceImage | None:
    ann_file = ctx.rel(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        ctx.issue("malformed", ann_file, "", f"not valid JSON ({e}); file skipped")
        return None
    if not isinstance(data, dict):
        ctx.issue("malformed", ann_file, "", f"the top level is a JSON {type(data).__name__}, not an object; skipped")
        return None
    shapes = data.get("shapes") or []
    if not isinstance(shapes, list):
        ctx.issue("malformed", ann_file, "shapes", f"'shapes' is a JSON {type(shapes).__name__}, not a list; skipped")
        return None
    name = str(data.get("imagePath") or "").replace("\\", "/") or path.with_suffix(".jpg").name
    image = ctx.make_image(name, ann_file, base_dirs=(path.parent,), declared_size=_declared_size(data))
    if image.path is None:
        image.file_name = _file_name_here(name, path, ann_file, ctx)
        if data.get("imageData"):
            image.embedded_in = os.path.abspath(path)
            image.stat = ctx.stat(path)
    objects: list[_Object] = []
    groups: dict[tuple[str, str], _Object] = {}
    for k, shape in enumerate(shapes, start=1):
        record = f"shape {k}"
        if not isinstance(shape, dict):
            ctx.issue("malformed", ann_file, record, f"a JSON {type(shape).__name__}, not a shape", boxes_lost=1)
            continue
        label = str(shape.get("label") or "").strip()
        try:
            if not label:
                raise ValueError("no label")
            box, kind = shape_box(shape)
        except UnsupportedShapeError as e:
            ctx.issue("unsupported_shape", ann_file, record, f"{e} {label!r} is not a box or polygon", boxes_lost=1)
            continue
        except (ValueError, TypeError, IndexError, KeyError) as e:
            ctx.issue("malformed", ann_file, record, f"unreadable shape: {e}", boxes_lost=1)
            continue
        if kind != "rectangle":
            ctx.issue("shape_to_box", ann_file, record, f"{kind} read as its enclosing box")
        key = _group_key(label, shape.get("group_id"))
        if key in groups:
            groups[key].add(box, k)
            continue
        obj = _Object(label, box, [k])
        objects.append(obj)
        if key is not None:
            groups[key] = obj
    for obj in objects:
        if len(obj.shapes) > 1:
            message = f"{len(obj.shapes)} {obj.label!r} shapes share a group_id: stored as one box around them all"
            ctx.issue("shapes_merged", ann_file, obj.record, message)
        crowd = obj.label == IGNORE_LABEL
        if crowd:
            ctx.issue("ignore_region", ann_file, obj.record, f"{IGNORE_LABEL!r} region kept as a crowd (ignore) region")
        image.objects.append(SourceObject(name=obj.label, box=obj.box, record=obj.record, iscrowd=int(crowd)))
    return image


def read(ctx: ReadContext) -> SourceData:
    """Read every LabelMe JSON file under the source folder; the classes are the labels found, sorted."""
    candidates = walk_files(ctx.root, ".json")
    files = [p for p in candidates if looks_like_labelme(p)]
    problem = lambda p: None if looks_like_coco(p) else json_problem(p)  # noqa: E731
    rejected = report_rejected(ctx, candidates, files, problem, "LabelMe JSON")
    if not files:
        raise no_files_error(ctx, "no LabelMe JSON file (with 'shapes') found", rejected)
    categories: list[Category] = []  # filled once every file is read: IGNORE_LABEL is not a class

    def images():
        names: set[str] = set()
        for p in files:
            image = read_file(Path(p), ctx)
            if image is not None:
                names.update(o.name for o in image.objects if o.name != IGNORE_LABEL)
                yield image
        categories.extend(Category(name=n) for n in sorted(names))

    return SourceData(images=images(), categories=categories)
