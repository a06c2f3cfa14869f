"""COCO ground truth for evaluation: from a detection dataset in the package schema, or from a COCO json.

Both give a private COCO dict ready for COCOeval: annotation ids renumbered 1..N (COCOeval treats id 0 as
"unmatched"), ``area`` from the data (``w * h`` when missing) and ``iscrowd`` 0/1.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset

from ..data.formats.coco import annotation_problem

logger = logging.getLogger(__name__)


def _first_bad(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _flat_list_column(objects: pa.StructArray, field: str, dtype: type, record_counts: np.ndarray) -> np.ndarray:
    """All values of the list field ``objects.<field>``, concatenated over records, checked against the box count."""
    column = objects.field(field)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if not np.array_equal(lengths, record_counts):
        row = _first_bad(lengths != record_counts)
        raise ValueError(
            f"Ground-truth record {row}: objects.{field} has {lengths[row]} values but objects.bbox has "
            f"{record_counts[row]} boxes; the lists in `objects` must be parallel."
        )
    return pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(dtype)


def coco_ground_truth_from_dataset(
    dataset: Dataset,
    label_to_category_id: Mapping[int, int] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build a COCO ground-truth dict from a detection dataset in the package schema, without decoding any image.

    Only the ``image_id``, ``width``, ``height``, ``file_name`` and ``objects`` columns are read, through Arrow, so
    this takes well under a second for 10k images. ``objects.category`` (0-based label) becomes the COCO category id
    ``label_to_category_id[label]``. By default that is the source's category id kept in the dataset's
    :class:`~detr_hf.data.schema.CategoryMapping` (the original COCO ids, so detections written with these ids can be
    scored against the original annotation file), and the label itself when the dataset has none. Class names come
    from the ``ClassLabel`` feature, or from ``class_names`` when the column is a plain integer. Annotation ids are
    renumbered 1..N: COCOeval treats id 0 as "unmatched" and the source ids need not be unique across the dataset.
    """
    for column in ("image_id", "width", "height", "objects"):
        if column not in dataset.column_names:
            raise ValueError(f"The ground-truth dataset has no {column!r} column (columns: {dataset.column_names}).")
    category_feature = dataset.features["objects"]["category"]
    category_feature = getattr(category_feature, "feature", category_feature)
    if isinstance(category_feature, ClassLabel):
        names = list(category_feature.names)
        if class_names is not None and list(class_names) != names:
            raise ValueError(
                f"class_names {list(class_names)} differ from the dataset's ClassLabel names {names}: the model and "
                "the dataset disagree on the meaning of the labels."
            )
        if label_to_category_id is None:
            label_to_category_id = _source_category_ids(dataset)
    elif class_names is not None:
        names = list(class_names)
    else:
        raise ValueError("objects.category is not a ClassLabel; pass the class names (id2label) explicitly.")
    mapping = _resolve_mapping(label_to_category_id, len(names))
    categories = [{"id": mapping[label], "name": name} for label, name in enumerate(names)]

    columns = [c for c in ("image_id", "width", "height", "file_name", "objects") if c in dataset.column_names]
    table = dataset.select_columns(columns).with_format("arrow")[:]
    image_ids = table.column("image_id").to_numpy().astype(np.int64)
    widths = table.column("width").to_numpy().astype(np.int64)
    heights = table.column("height").to_numpy().astype(np.int64)
    file_names = table.column("file_name").to_pylist() if "file_name" in columns else None

    unique_ids, counts = np.unique(image_ids, return_counts=True)
    if (counts > 1).any():
        duplicate = unique_ids[counts > 1][0]
        rows = np.flatnonzero(image_ids == duplicate)[:5].tolist()
        raise ValueError(f"Ground-truth image_id {duplicate} appears in several records (rows {rows}).")
    row = _first_bad((widths <= 0) | (heights <= 0))
    if row is not None:
        raise ValueError(
            f"Ground-truth record {row} (image_id {image_ids[row]}) has a non-positive size {widths[row]}x{heights[row]}."
        )

    objects = table.column("objects").combine_chunks()
    if objects.null_count:
        row = _first_bad(objects.is_null().to_numpy(zero_copy_only=False))
        raise ValueError(f"Ground-truth record {row} (image_id {image_ids[row]}) has objects = None.")
    record_counts = pc.list_value_length(objects.field("bbox")).to_numpy(zero_copy_only=False)
    box_lists = pc.list_flatten(objects.field("bbox"))
    box_lengths = pc.list_value_length(box_lists).to_numpy(zero_copy_only=False)
    if (box_lengths != 4).any():
        index = _first_bad(box_lengths != 4)
        row = int(np.searchsorted(np.cumsum(record_counts), index, side="right"))
        raise ValueError(
            f"Ground-truth record {row} (image_id {image_ids[row]}) has a bbox with {box_lengths[index]} numbers "
            "instead of 4 ([x, y, w, h])."
        )
    bbox_values = pc.list_flatten(box_lists).to_numpy(zero_copy_only=False)
    boxes = bbox_values.astype(np.float64).reshape(-1, 4)
    labels = _flat_list_column(objects, "category", np.int64, record_counts)
    field_names = {objects.type.field(i).name for i in range(objects.type.num_fields)}
    if "area" in field_names:
        areas = _flat_list_column(objects, "area", np.float64, record_counts)
    else:
        areas = boxes[:, 2] * boxes[:, 3]
    if "iscrowd" in field_names:
        crowd = _flat_list_column(objects, "iscrowd", np.int64, record_counts)
    else:
        crowd = np.zeros(len(boxes), dtype=np.int64)

    box_rows = np.repeat(np.arange(len(image_ids)), record_counts)
    checks = (
        (~np.isfinite(boxes).all(axis=1), "a non-finite bbox"),
        ((boxes[:, 2] < 0) | (boxes[:, 3] < 0), "a bbox with negative width or height"),
        ((labels < 0) | (labels >= len(names)), f"a category outside 0..{len(names) - 1}"),
        (~np.isfinite(areas) | (areas < 0), "a negative or non-finite area"),
        ((crowd != 0) & (crowd != 1), "an iscrowd flag other than 0/1"),
    )
    for bad, problem in checks:
        index = _first_bad(bad)
        if index is not None:
            row = int(box_rows[index])
            within = index - int(np.searchsorted(box_rows, row))
            raise ValueError(
                f"Ground-truth record {row} (image_id {image_ids[row]}), object {within}, has {problem}: "
                f"bbox={boxes[index].tolist()}, category={labels[index]}, area={areas[index]}, iscrowd={crowd[index]}."
            )

    images = [{"id": int(i), "width": int(w), "height": int(h)} for i, w, h in zip(image_ids, widths, heights)]
    if file_names is not None:
        for image, name in zip(images, file_names):
            image["file_name"] = name
    category_ids = np.array([mapping[label] for label in range(len(names))], dtype=np.int64)[labels]
    annotations = [
        {"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": z}
        for n, (i, c, b, a, z) in enumerate(
            zip(
                image_ids[box_rows].tolist(),
                category_ids.tolist(),
                boxes.tolist(),
                areas.tolist(),
                crowd.tolist(),
            )
        )
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _source_category_ids(dataset: Dataset) -> dict[int, int] | None:
    """Label -> the source's category id, from the dataset's CategoryMapping; None (labels as ids) when it has none."""
    from ..data.schema import get_category_mapping

    mapping = get_category_mapping(dataset)
    ids = {c.label: mapping.source_id(c.label) for c in mapping.categories}
    if all(c.source_id is None for c in mapping.categories):
        return None
    if len(set(ids.values())) != len(ids):
        logger.warning("The dataset's source category ids %s are not unique; labels are used as category ids.", ids)
        return None
    return ids


def load_coco_ground_truth(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read and check a COCO detection ground truth (path or dict) into a private copy ready for evaluation.

    Missing ``area`` becomes ``w * h`` and missing ``iscrowd`` becomes 0; annotation ids are renumbered 1..N in file
    order (COCOeval treats id 0 as "unmatched"). The caller's dict is never modified.
    """
    where = str(source) if isinstance(source, (str, os.PathLike)) else "the ground-truth dict"
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8-sig") as f:
            data = json.load(f)
    else:
        data = source
    if not isinstance(data, Mapping) or not all(k in data for k in ("images", "annotations", "categories")):
        raise ValueError(f"{where}: a COCO ground truth needs 'images', 'annotations' and 'categories'.")

    images = []
    for n, image in enumerate(data["images"]):
        try:
            images.append({"id": int(image["id"]), "width": int(image["width"]), "height": int(image["height"])})
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: images[{n}] needs integer 'id', 'width' and 'height' ({error!r}).") from None
        if "file_name" in image:
            images[-1]["file_name"] = image["file_name"]
    image_ids = {image["id"] for image in images}
    if len(image_ids) != len(images):
        raise ValueError(f"{where}: image ids are not unique.")
    categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in data["categories"]]
    category_ids = {c["id"] for c in categories}
    if len(category_ids) != len(categories):
        raise ValueError(f"{where}: category ids are not unique.")

    annotations = []
    for n, ann in enumerate(data["annotations"]):
        # the COCO reader's checks, then the box: scored as the file has it, so it must be there and sound
        problem = annotation_problem(ann, image_ids, category_ids) or _box_problem(ann.get("bbox"))
        if problem is not None:
            raise ValueError(f"{where}: annotations[{n}] (id {ann.get('id')!r}): {problem}.")
        bbox = [float(v) for v in ann["bbox"]]
        area = float(ann["area"]) if ann.get("area") is not None else bbox[2] * bbox[3]
        annotations.append(
            {
                "id": n + 1,
                "image_id": int(ann["image_id"]),
                "category_id": int(ann["category_id"]),
                "bbox": bbox,
                "area": area,
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
    return {"images": images, "annotations": annotations, "categories": categories}


def _box_problem(bbox: Any) -> str | None:
    """Why a ground-truth ``bbox`` can't be scored against (the reader takes a polygon's bounds, or clips and reports a
    box; evaluation uses the file's boxes as they are), or None."""
    if bbox is None:
        return "no 'bbox' (evaluation does not take boxes from polygons)"
    values = [float(v) for v in bbox]
    if not all(math.isfinite(v) for v in values) or values[2] < 0 or values[3] < 0:
        return f"bbox {bbox!r} is not finite or has a negative width or height"
    return None


def _resolve_mapping(label_to_category_id: Mapping[int, int] | None, num_labels: int) -> dict[int, int]:
    if label_to_category_id is None:
        return {label: label for label in range(num_labels)}
    mapping = {int(k): int(v) for k, v in label_to_category_id.items()}
    missing = [label for label in range(num_labels) if label not in mapping]
    if missing:
        raise ValueError(f"label_to_category_id has no category id for labels {missing}.")
    used = [mapping[label] for label in range(num_labels)]
    if len(set(used)) != len(used):
        raise ValueError(f"label_to_category_id maps several labels to the same category id: {mapping}.")
    return mapping


def label_to_category_id_by_name(
    categories: Sequence[Mapping[str, Any]], id2label: Mapping[int, str]
) -> dict[int, int]:
    """Map model labels to COCO category ids by matching ``id2label`` names with the categories' names."""
    by_name = {str(c["name"]): int(c["id"]) for c in categories}
    missing = [name for name in id2label.values() if name not in by_name]
    if missing:
        raise ValueError(
            f"Classes {missing} of id2label are not among the ground-truth categories {sorted(by_name)}; "
            "pass label_to_category_id explicitly."
        )
    return {int(label): by_name[name] for label, name in id2label.items()}
