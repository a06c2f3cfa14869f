"""CVAT for images XML (``<annotations>`` with one ``<image>`` per image): boxes, and polygons/masks as their boxes.

The class list and its order come from the task's (or project's) ``<labels>``; an image's ``subset`` attribute
(CVAT projects) gives its split. Rotated boxes are stored as their enclosing axis-aligned box. The file is read with
``iterparse``, so a large export is never held whole.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from ..report import DatasetValidationError
from ..schema import Category
from ..splits import normalize_split_name
from .base import (
    ReadContext,
    SourceData,
    SourceImage,
    SourceObject,
    UnsupportedShapeError,
    no_files_error,
    report_rejected,
    xml_problem,
)
from .coordinates import parse_number, parse_size, points_bounds, rotated_box_bounds
from .voc import xml_root_tag

NAME = "cvat"
ALIASES: tuple[str, ...] = ("cvat_images",)
_NOT_BOXES = {"polyline", "points", "cuboid", "skeleton"}


def find_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.xml") if xml_root_tag(p) == "annotations")


def _attributes(element: ET.Element) -> dict[str, str]:
    return {(a.get("name") or "").lower(): (a.text or "").strip().lower() for a in element.findall("attribute")}


def _flag(attributes: dict[str, str], name: str) -> int:
    return int(attributes.get(name, "false") in ("true", "1", "yes"))


def element_box(el: ET.Element) -> tuple[float, float, float, float]:
    """The enclosing box of a ``box``, ``polygon``, ``mask`` or ``ellipse`` element."""
    if el.tag == "box":
        box = tuple(parse_number(el.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
        return rotated_box_bounds(box, parse_number(el.get("rotation") or 0))
    if el.tag == "polygon":
        points = [p.split(",") for p in (el.get("points") or "").split(";") if p.strip()]
        if len(points) < 3:
            raise ValueError(f"a polygon needs at least 3 points, got {len(points)}")
        return points_bounds([(parse_number(x), parse_number(y)) for x, y in points])
    if el.tag == "mask":
        left, top, w, h = (parse_number(el.get(k)) for k in ("left", "top", "width", "height"))
        return (left, top, left + w, top + h)
    if el.tag == "ellipse":
        cx, cy, rx, ry = (parse_number(el.get(k)) for k in ("cx", "cy", "rx", "ry"))
        return rotated_box_bounds((cx - rx, cy - ry, cx + rx, cy + ry), parse_number(el.get("rotation") or 0))
    raise UnsupportedShapeError(el.tag)


def _read_image(el: ET.Element, path: Path, ann_file: str, ctx: ReadContext) -> SourceImage:
    name = el.get("name") or ""
    record = f"image id {el.get('id', '?')}"
    size = parse_size(el.get("width"), el.get("height"))
    subset = el.get("subset")
    split = normalize_split_name(subset) if subset and subset.lower() != "default" else None
    image = ctx.make_image(
        name, ann_file, base_dirs=(path.parent, path.parent / "images"), declared_size=size, split=split,
        record=record,
    )  # fmt: skip
    for k, shape in enumerate(el, start=1):
        if shape.tag == "tag":  # image-level label: not a box, nothing to keep
            continue
        shape_record = f"{record}, {shape.tag} {k} ({name})"
        label = (shape.get("label") or "").strip()
        try:
            if not label:
                raise ValueError("no label")
            box = element_box(shape)
        except UnsupportedShapeError:
            ctx.issue("unsupported_shape", ann_file, shape_record, f"{shape.tag} is not a box or polygon", boxes_lost=1)
            continue
        except (ValueError, TypeError) as e:
            ctx.issue("malformed", ann_file, shape_record, f"unreadable {shape.tag}: {e}", boxes_lost=1)
            continue
        if shape.tag != "box" or parse_number(shape.get("rotation") or 0):
            ctx.issue("shape_to_box", ann_file, shape_record, f"{shape.tag} read as its enclosing box")
        attributes = _attributes(shape)
        image.objects.append(
            SourceObject(
                name=label,
                box=box,
                record=shape_record,
                difficult=_flag(attributes, "difficult"),
                truncated=_flag(attributes, "truncated"),
            )
        )
    return image


def read_file(path: Path, ctx: ReadContext, labels: list[Category]) -> Iterator[SourceImage]:
    ann_file = ctx.rel(path)
    try:
        for _, el in ET.iterparse(path, events=("end",)):
            if el.tag == "labels" and not labels:
                names = [(lab.findtext("name") or "").strip() for lab in el.findall("label")]
                labels.extend(Category(name=n) for n in names if n)
            elif el.tag == "track":
                raise DatasetValidationError(
                    f"{ann_file}: this is a 'CVAT for video' export (it has <track>); export 'CVAT for images'"
                )
            elif el.tag == "image":
                yield _read_image(el, path, ann_file, ctx)
                el.clear()
    except ET.ParseError as e:
        ctx.issue("malformed", ann_file, f"line {e.position[0]}", f"XML stops being valid here ({e}); rest skipped")


def read(ctx: ReadContext) -> SourceData:
    files = find_files(ctx.root)
    rejected = report_rejected(ctx, sorted(ctx.root.rglob("*.xml")), files, xml_problem, "CVAT XML")
    if not files:
        raise no_files_error(ctx, "no CVAT XML file (root element <annotations>) found", rejected)
    labels: list[Category] = []  # the first file's <labels>, filled as it is read
    return SourceData(images=(image for p in files for image in read_file(p, ctx, labels)), categories=labels)
