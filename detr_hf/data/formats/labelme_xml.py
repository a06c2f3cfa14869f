"""MIT LabelMe 3.0 XML (the LabelMe web tool's format, also a CVAT and Datumaro export): one ``<annotation>`` per image.

Each ``<object>`` has a ``<name>`` and a ``<polygon>`` of ``<pt><x>..</x><y>..</y></pt>`` points (a box when its
``<type>`` is ``bounding_box``), or a ``<segm>`` mask with its ``<box>``; polygons and masks are stored as their
enclosing boxes. Objects marked ``<deleted>1</deleted>`` were removed in the tool and are skipped (counted in the
report's notes). The image is ``<folder>/<filename>``, found as for every format; ``<imagesize>`` gives its size as
``<nrows>`` (height) and ``<ncols>`` (width). Classes are the names found, sorted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ..report import DatasetValidationError
from .base import ReadContext, SourceData, SourceImage, SourceObject, walk_files
from .coordinates import parse_number, parse_size, points_bounds
from .voc import annotation_xml_kind

NAME = "labelme_xml"
ALIASES: tuple[str, ...] = ("labelme3", "mit_labelme", "labelme_3_0")


def find_files(root: Path) -> list[str]:
    return [p for p in walk_files(root, ".xml") if annotation_xml_kind(p) == NAME]


def _is_set(element: ET.Element, tag: str) -> bool:
    text = (element.findtext(tag) or "").strip().lower()
    return text in ("1", "true", "yes")


def _size(root: ET.Element) -> tuple[int, int] | None:
    size = root.find("imagesize")
    if size is None:
        return None
    return parse_size(size.findtext("ncols"), size.findtext("nrows"))


def object_box(obj: ET.Element) -> tuple[tuple[float, float, float, float], str]:
    """An object's box and what it was drawn as (``bounding_box``, ``polygon`` or ``mask``); ``ValueError`` if none."""
    polygon = obj.find("polygon")
    if polygon is not None:
        points = [(parse_number(pt.findtext("x")), parse_number(pt.findtext("y"))) for pt in polygon.iter("pt")]
        kind = "bounding_box" if (obj.findtext("type") or "").strip() == "bounding_box" else "polygon"
        needed = 2 if kind == "bounding_box" else 3
        if len(points) < needed:
            raise ValueError(f"a {kind} needs at least {needed} points, got {len(points)}")
        return points_bounds(points), kind
    box = obj.find("segm/box")
    if box is not None:
        return tuple(parse_number(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")), "mask"
    raise ValueError("no <polygon> and no <segm><box>")


def read_file(path: Path, ctx: ReadContext, deleted: list[str]) -> SourceImage | None:
    """One file's image; the records of deleted objects are appended to ``deleted``."""
    ann_file = ctx.rel(path)
    root = ctx.parse_xml(path)
    if root is None:
        return None
    name = (root.findtext("filename") or "").strip() or f"{path.stem}.jpg"
    folder = (root.findtext("folder") or "").strip().strip("/")
    base_dirs = [path.parent, path.parent.parent / "Images"]
    if folder:
        base_dirs += [path.parent / folder, ctx.root / folder, ctx.root / "Images" / folder]
    image = ctx.make_image(name, ann_file, base_dirs=tuple(base_dirs), declared_size=_size(root))
    for k, obj in enumerate(root.findall("object"), start=1):
        record = f"object {k}"
        if _is_set(obj, "deleted"):
            deleted.append(f"{ann_file}: {record}")
            continue
        label = (obj.findtext("name") or "").strip()
        try:
            if not label:
                raise ValueError("no <name>")
            box, kind = object_box(obj)
        except (ValueError, TypeError) as e:
            ctx.issue("malformed", ann_file, record, f"unreadable object: {e}", boxes_lost=1)
            continue
        if kind != "bounding_box":
            ctx.issue("shape_to_box", ann_file, record, f"{kind} read as its enclosing box")
        image.objects.append(SourceObject(name=label, box=box, record=record))
    return image


def read(ctx: ReadContext) -> SourceData:
    """Read every MIT LabelMe XML file under the source folder."""
    files = find_files(ctx.root)
    if not files:
        raise DatasetValidationError(f"{ctx.root}: no MIT LabelMe XML file (<annotation> with <polygon>) found")

    def images():
        deleted: list[str] = []
        for p in files:
            image = read_file(Path(p), ctx, deleted)
            if image is not None:
                yield image
        if deleted:
            ctx.report.notes.append(
                f"{len(deleted)} object(s) marked <deleted>1</deleted> in LabelMe were skipped (first: {deleted[0]})"
            )

    return SourceData(images=images())
