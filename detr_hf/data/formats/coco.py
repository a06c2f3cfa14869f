"""COCO JSON: read (one file per split, sparse or 1-based category ids, crowd boxes) and write.

A source folder may hold several COCO files; each is a split named after its file (``instances_val2017.json`` ->
``validation``). Category ids stay attached to their names: the dataset's labels are the categories sorted by id,
and :class:`~detr_hf.data.schema.CategoryMapping` keeps the ids, so :func:`export_coco` writes the original ones back.
Optional ``difficult``/``truncated`` keys on annotations (which :func:`export_coco` writes) are read back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Container, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from datasets import Dataset

from ...box_ops import xywh_to_xyxy
from ..report import DatasetValidationError
from ..schema import Category, CategoryMapping, get_category_mapping
from ..splits import split_from_text
from .base import ReadContext, SourceData, SourceImage, SourceObject, json_problem, no_files_error, report_rejected
from .coordinates import flat_points_bounds, parse_flag

NAME = "coco"
ALIASES: tuple[str, ...] = ("coco_json",)
_REQUIRED_KEYS = ('"images"', '"annotations"')


def looks_like_coco(path: Path) -> bool:
    """Cheap check on the start of a JSON file: COCO files have ``images`` and ``annotations`` at the top level."""
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode("utf-8", errors="ignore")
    if '"shapes"' in head:  # LabelMe
        return False
    if all(k in head for k in _REQUIRED_KEYS):
        return True
    if path.stat().st_size <= (1 << 16):
        return False
    try:  # keys can come after a long "info"/"licenses" block; look at the whole file's top level
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(data, dict) and "images" in data and "annotations" in data


def find_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*.json") if not p.name.startswith(".") and looks_like_coco(p))
    instances = [p for p in files if p.name.startswith("instances")]
    return instances or files


def _split_names(files: list[Path]) -> dict[Path, str | None]:
    if len(files) == 1:
        return {files[0]: split_from_text(files[0].stem)}
    names = {p: split_from_text(p.stem) or p.stem for p in files}
    seen: dict[str, Path] = {}
    for p, name in names.items():
        if name in seen:
            raise DatasetValidationError(
                f"COCO files {seen[name]} and {p} both look like split {name!r}; pass files=[...] to choose"
            )
        seen[name] = p
    return names


def _list(data: dict, key: str, ann_file: str) -> list:
    """``data[key]`` as a list (``[]`` when absent); anything else is not a COCO file."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DatasetValidationError(f"{ann_file}: '{key}' must be a JSON list, got a JSON {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)


def _read_categories(categories: list, ann_file: str, known: dict[int, Category]) -> None:
    for k, c in enumerate(categories):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DatasetValidationError(f"{ann_file}: categories[{k}] needs an 'id' and a 'name', got {c!r}")
        try:
            cid = int(c["id"])
        except (TypeError, ValueError, OverflowError):
            raise DatasetValidationError(f"{ann_file}: categories[{k}] has a non-integer id {c['id']!r}") from None
        name = str(c["name"])
        if cid in known and known[cid].name != name:
            raise DatasetValidationError(
                f"{ann_file}: category id {cid} is named {name!r} here but {known[cid].name!r} in another file"
            )
        known[cid] = Category(name=name, source_id=cid, supercategory=c.get("supercategory"))


def _read_box(ann: dict) -> tuple[tuple[float, float, float, float], bool]:
    """The annotation's box as xyxy, and whether it came from its polygon (no ``bbox`` key)."""
    bbox = ann.get("bbox")
    if bbox is not None:
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
        return xywh_to_xyxy(bbox), False
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
        points = [v for polygon in segmentation for v in polygon]
        return flat_points_bounds([float(v) for v in points]), True
    raise ValueError("no bbox, and no polygon to take one from")


class _AnnotationProblem(ValueError):
    """Why an annotation is left out, and the report's issue kind for it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Annotation(NamedTuple):
    image_id: int
    category_id: int
    box: tuple[float, float, float, float]  # xyxy
    from_polygon: bool
    ann_id: int | None


def _parse_annotation(ann: object, image_ids: Container[int], category_ids: Container[int]) -> _Annotation:
    """The fields the reader keeps from one COCO annotation; raises :class:`_AnnotationProblem` when it can't."""
    if not isinstance(ann, dict):
        raise _AnnotationProblem("malformed", f"a JSON {_json_type(ann)}, not an annotation object")
    try:
        image_id = int(ann["image_id"])
        category_id = int(ann["category_id"])
        box, from_polygon = _read_box(ann)
        ann_id = int(ann["id"]) if ann.get("id") is not None else None
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise _AnnotationProblem("malformed", f"unreadable annotation: {e}") from None
    if image_id not in image_ids:
        raise _AnnotationProblem("orphan_annotation", f"image id {image_id} is not in 'images'")
    if category_id not in category_ids:
        raise _AnnotationProblem("unknown_class", f"category id {category_id} is not in 'categories'")
    return _Annotation(image_id, category_id, box, from_polygon, ann_id)


def _flag(ann: dict, key: str, ctx: ReadContext, ann_file: str, record: str) -> int:
    """A 0/1 flag of an annotation; any other value is a ``malformed`` fix and reads as 0."""
    value = parse_flag(ann.get(key))
    if value is None:
        ctx.issue("malformed", ann_file, record, f"{key} is {ann.get(key)!r}, not 0 or 1: read as 0")
        return 0
    return value


def annotation_problem(ann: dict, image_ids: Container[int], category_ids: Container[int]) -> str | None:
    """Why the COCO reader would leave annotation ``ann`` out (in its words), or None when it keeps it.

    The checks are the reader's: an object with integer ``image_id`` and ``category_id`` found in ``image_ids`` and
    ``category_ids``, an optional integer ``id``, and a box (``bbox`` as ``[x, y, w, h]``, or a polygon
    ``segmentation`` to take one from). Whether the box is finite and inside its image is checked later, on the image.
    """
    try:
        _parse_annotation(ann, image_ids, category_ids)
    except _AnnotationProblem as problem:
        return str(problem)
    return None


def read_file(path: Path, split: str | None, ctx: ReadContext, categories: dict[int, Category]) -> list:
    ann_file = ctx.rel(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise DatasetValidationError(f"{ann_file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DatasetValidationError(
            f"{ann_file}: the top level is a JSON {_json_type(data)}; a COCO file is an object with 'images', "
            "'annotations' and 'categories'"
        )
    entries, anns, cats = (_list(data, key, ann_file) for key in ("images", "annotations", "categories"))
    if anns and not cats:
        raise DatasetValidationError(
            f"{ann_file}: {len(anns)} annotations but no 'categories' to name their classes; add the categories list"
        )
    _read_categories(cats, ann_file, categories)
    base_dirs = (path.parent, path.parent.parent, path.parent.parent / "images")
    images: dict[int, SourceImage] = {}
    for k, entry in enumerate(entries):
        record = f"images[{k}]"
        if not isinstance(entry, dict):
            ctx.issue("malformed", ann_file, record, f"a JSON {_json_type(entry)}, not an image object")
            continue
        try:
            image_id = int(entry["id"])
            name = entry["file_name"]
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"file_name {name!r} is not a file name")
            size = (int(entry["width"]), int(entry["height"])) if entry.get("width") and entry.get("height") else None
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            ctx.issue("malformed", ann_file, record, f"image entry needs an integer id and a file_name ({e!r})")
            continue
        if image_id in images:
            ctx.issue("duplicate_image", ann_file, record, f"image id {image_id} is listed twice; kept the first")
            continue
        images[image_id] = ctx.make_image(
            name, ann_file, base_dirs=base_dirs, image_id=image_id, declared_size=size, split=split,
            record=f"image id {image_id}",
        )  # fmt: skip
    for k, ann in enumerate(anns):
        record = f"annotation id {ann.get('id', '?')}" if isinstance(ann, dict) else f"annotations[{k}]"
        try:
            parsed = _parse_annotation(ann, images, categories)
        except _AnnotationProblem as problem:
            ctx.issue(problem.kind, ann_file, record, str(problem), boxes_lost=1)
            continue
        image = images[parsed.image_id]
        if parsed.from_polygon:
            ctx.issue("shape_to_box", ann_file, record, "no bbox: used the polygon's enclosing box")
        area = ann.get("area")
        image.objects.append(
            SourceObject(
                name=categories[parsed.category_id].name,
                box=parsed.box,
                record=record,
                source_id=parsed.ann_id,
                area=float(area) if isinstance(area, (int, float)) else None,
                **{key: _flag(ann, key, ctx, ann_file, record) for key in ("iscrowd", "difficult", "truncated")},
            )
        )
    return list(images.values())


def read(ctx: ReadContext, files: list[str] | None = None) -> SourceData:
    """Read every COCO file under the source folder (or only ``files``, paths relative to it)."""
    paths = [ctx.root / f for f in files] if files else find_files(ctx.root)
    rejected = []
    if not files:
        candidates = sorted(p for p in ctx.root.rglob("*.json") if not p.name.startswith("."))
        problem = lambda p: None if looks_like_coco(p) else json_problem(p)  # noqa: E731
        rejected = report_rejected(ctx, candidates, paths, problem, "COCO JSON")
    if not paths:
        raise no_files_error(ctx, "no COCO JSON file (with 'images' and 'annotations') found", rejected)
    splits = _split_names(paths)
    categories: dict[int, Category] = {}
    ordered: list[Category] = []  # filled once every file is read

    def images() -> Iterator[SourceImage]:
        for path, split in splits.items():
            yield from read_file(path, split, ctx, categories)
        names = [c.name for c in categories.values()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            ids = {n: [c.source_id for c in categories.values() if c.name == n] for n in duplicates}
            raise DatasetValidationError(f"{ctx.root}: category names must be unique; repeated: {ids}")
        ordered.extend(categories[k] for k in sorted(categories))

    return SourceData(images=images(), categories=ordered)


# -- writing -------------------------------------------------------------------------------------------------------
def _f32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (no ``0.30000001192092896`` noise)."""
    return float(str(np.float32(value)))


def export_coco(
    dataset: Dataset,
    path: str | Path | None = None,
    *,
    mapping: CategoryMapping | None = None,
    difficult_as_crowd: bool = False,
) -> dict:
    """Write ``dataset`` as a COCO JSON file (for pycocotools) and return the dict.

    Category ids are the source's (see :func:`~detr_hf.data.schema.get_category_mapping`); image and annotation ids
    are the dataset's. ``difficult``/``truncated`` flags are written as extra annotation keys when set (pycocotools
    ignores them); ``difficult_as_crowd=True`` also marks difficult boxes as crowd, so COCO evaluation ignores them
    the way Pascal VOC evaluation does.
    """
    mapping = mapping or get_category_mapping(dataset)
    columns = ["image_id", "file_name", "width", "height", "objects"]
    rows = dataset.select_columns([c for c in columns if c in dataset.column_names])
    images, annotations = [], []
    for batch in rows.iter(batch_size=1000):
        for k, image_id in enumerate(batch["image_id"]):
            images.append(
                {
                    "id": int(image_id),
                    "file_name": batch["file_name"][k],
                    "width": int(batch["width"][k]),
                    "height": int(batch["height"][k]),
                }
            )
            objects = batch["objects"][k]
            n = len(objects["bbox"])
            flags = {key: objects.get(key) or [0] * n for key in ("iscrowd", "difficult", "truncated")}
            for j in range(n):
                x, y, w, h = (_f32(v) for v in objects["bbox"][j])
                ann = {
                    "id": int(objects["id"][j]),
                    "image_id": int(image_id),
                    "category_id": mapping.source_id(int(objects["category"][j])),
                    "bbox": [x, y, w, h],
                    "area": _f32(objects["area"][j]),
                    "iscrowd": int(flags["iscrowd"][j]),
                }
                for key in ("difficult", "truncated"):
                    if flags[key][j]:
                        ann[key] = 1
                if difficult_as_crowd and flags["difficult"][j]:
                    ann["iscrowd"] = 1
                annotations.append(ann)
    if len({a["id"] for a in annotations}) != len(annotations):
        warnings.warn("annotation ids are not unique (datasets were concatenated?); numbering them 1..N", stacklevel=2)
        for k, ann in enumerate(annotations, start=1):
            ann["id"] = k
    coco = {
        "info": {"description": f"exported by detr_hf from {dataset.info.dataset_name or 'a dataset'}"},
        "images": images,
        "annotations": annotations,
        "categories": mapping.to_coco_categories(),
    }
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(coco), encoding="utf-8")
    return coco


export = export_coco  # the registry's name for it (formats.export_dataset)
