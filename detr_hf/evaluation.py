"""COCO box evaluation: mAP/mAR as pycocotools computes them, with torchmetrics' metric names.

Ground truth comes from a detection ``datasets.Dataset`` in the package schema (see ``detr_hf.data.schema``) or from
a COCO json (path or dict). Predictions are what an image processor's ``post_process_object_detection`` returns,
plus each image's id. The numbers are computed by faster-coco-eval (default) or pycocotools, and they are the
official COCO numbers: the metrics are read from the backend's accumulated precision/recall arrays with the same
reduction as ``COCOeval.summarize``.

Conventions worth knowing:

- Area ranges (small/medium/large) use each ground-truth box's ``area`` from the data, as COCO does (for COCO proper
  that is the segmentation area, not the box area); when a record has no area, ``w * h`` is used.
- ``iscrowd=1`` boxes stay crowd regions: detections matched to them are ignored, neither true nor false positives.
- A metric is ``-1`` when it is undefined (e.g. a class with no ground truth, or no small objects): COCO's convention.
- Per-class results are keyed by class name, over every class the ground truth declares.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import ClassLabel, Dataset, DatasetDict

from .box_ops import xyxy_to_xywh

logger = logging.getLogger(__name__)

Backend = Literal["faster_coco_eval", "pycocotools"]
BACKENDS: tuple[str, ...] = ("faster_coco_eval", "pycocotools")

_AREA_NAMES = ("small", "medium", "large")


# --------------------------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------------------------


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
    from .data.schema import get_category_mapping

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
        bbox = ann.get("bbox")
        if bbox is None or len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{where}: annotations[{n}] (id {ann.get('id')}) has an invalid bbox {bbox!r}.")
        if ann.get("image_id") not in image_ids:
            raise ValueError(f"{where}: annotations[{n}] refers to unknown image_id {ann.get('image_id')!r}.")
        if ann.get("category_id") not in category_ids:
            raise ValueError(f"{where}: annotations[{n}] refers to unknown category_id {ann.get('category_id')!r}.")
        bbox = [float(v) for v in bbox]
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


# --------------------------------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------------------------------


def _as_tensor(value: Any) -> torch.Tensor:
    """A CPU tensor; half-precision floats (mixed-precision evaluation) become float32, float64 stays."""
    tensor = torch.as_tensor(value).detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()
    return tensor


def _as_numpy(value: Any) -> np.ndarray:
    return _as_tensor(value).numpy()


# --------------------------------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------------------------------


class CocoEvaluator:
    """Accumulates detections image by image and computes COCO box metrics under torchmetrics' names.

    Args:
        ground_truth: a detection ``datasets.Dataset`` in the package schema, a COCO json path, or a COCO dict.
        id2label: the model's label names. With a dataset, used only when ``objects.category`` is not a
            ``ClassLabel`` (and checked against it when it is). With a COCO json and no ``label_to_category_id``,
            labels are matched to categories by name.
        label_to_category_id: the COCO category id of each 0-based model label. Default: for a dataset, the
            source's ids kept in its ``CategoryMapping`` (e.g. COCO's sparse 1, 2, 3, 5, ...), else the label itself;
            for a COCO json with ``id2label``, matched by name. ``coco_results()`` and the metrics use these ids.
        backend: ``"faster_coco_eval"`` (C++, default) or ``"pycocotools"``; both give the same numbers.
        max_detections: COCO's largest ``maxDets``; the metrics use thresholds ``1, 10, max_detections``, applied by
            COCOeval per image and class.
        duplicates: what to do when an ``image_id`` arrives twice (a distributed sampler pads its last batch with
            repeated samples): ``"first"`` keeps the first arrival and counts the rest in ``num_duplicates``;
            ``"error"`` raises.
        verbose: let the backend print its progress and the classic 12-line summary.

    Usage (one process or several under Accelerate)::

        evaluator = CocoEvaluator(val_dataset)
        for batch in dataloader:
            outputs = model(**batch)
            results = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
            evaluator.update(results, image_ids=[t["image_id"] for t in batch["labels"]])
        evaluator.gather()  # on every process; a no-op without torch.distributed
        metrics = evaluator.compute()  # identical on every process; compute on the main one only
    """

    def __init__(
        self,
        ground_truth: Dataset | str | os.PathLike | Mapping[str, Any],
        *,
        id2label: Mapping[int, str] | None = None,
        label_to_category_id: Mapping[int, int] | None = None,
        backend: Backend = "faster_coco_eval",
        max_detections: int = 100,
        duplicates: Literal["first", "error"] = "first",
        verbose: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        if duplicates not in ("first", "error"):
            raise ValueError(f"duplicates must be 'first' or 'error', got {duplicates!r}.")
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}.")
        self.backend = backend
        self.max_detections = int(max_detections)
        self.duplicates = duplicates
        self.verbose = verbose
        id2label = None if id2label is None else {int(k): str(v) for k, v in id2label.items()}
        if id2label is not None and sorted(id2label) != list(range(len(id2label))):
            raise ValueError(f"id2label keys must be the labels 0..n-1, got {sorted(id2label)}.")

        if isinstance(ground_truth, DatasetDict):
            raise TypeError(f"Pass one split of the DatasetDict (splits: {list(ground_truth)}), not the whole dict.")
        if isinstance(ground_truth, Dataset):
            names = None if id2label is None else [id2label[i] for i in range(len(id2label))]
            self.ground_truth = coco_ground_truth_from_dataset(ground_truth, label_to_category_id, names)
            mapping = {label: c["id"] for label, c in enumerate(self.ground_truth["categories"])}
        else:
            self.ground_truth = load_coco_ground_truth(ground_truth)
            categories = self.ground_truth["categories"]
            if label_to_category_id is not None:
                mapping = {int(k): int(v) for k, v in label_to_category_id.items()}
            elif id2label is not None:
                mapping = label_to_category_id_by_name(categories, id2label)
            else:
                mapping = {c["id"]: c["id"] for c in categories}
        if not self.ground_truth["images"]:
            raise ValueError("The ground truth has no images.")
        self.label_to_category_id: dict[int, int] = mapping
        names = [c["name"] for c in self.ground_truth["categories"]]
        if len(set(names)) != len(names):
            raise ValueError(f"Category names must be unique to key per-class metrics by name, got {names}.")
        known = {c["id"] for c in self.ground_truth["categories"]}
        unknown = {label: cid for label, cid in mapping.items() if cid not in known}
        if unknown:
            raise ValueError(f"label_to_category_id points labels to category ids the ground truth lacks: {unknown}.")
        self.category_names: dict[int, str] = {c["id"]: c["name"] for c in self.ground_truth["categories"]}
        self._image_ids = frozenset(image["id"] for image in self.ground_truth["images"])
        max_label = max(mapping, default=-1)
        self._label_lookup = np.full(max_label + 1, -1, dtype=np.int64)
        for label, category_id in mapping.items():
            if label >= 0:
                self._label_lookup[label] = category_id
        self.reset()

    # -- accumulation -------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every prediction (start of a new evaluation)."""
        self._predictions: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.num_duplicates = 0
        self._gathered = False

    def __len__(self) -> int:
        """Number of distinct images that received predictions."""
        return len(self._predictions)

    def _store(self, image_id: int, entry: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        if image_id in self._predictions:
            if self.duplicates == "error":
                raise ValueError(
                    f"Predictions for image_id {image_id} arrived twice (duplicates='error'). A distributed sampler "
                    "repeats samples to even out its last batch; use duplicates='first' to keep the first arrival."
                )
            self.num_duplicates += 1
            return
        self._predictions[image_id] = entry

    def update(self, predictions: Sequence[Mapping[str, Any]], image_ids: Sequence[Any] | None = None) -> None:
        """Add one batch of post-processed predictions.

        Each prediction holds ``scores`` (n), ``labels`` (n, 0-based model labels) and ``boxes`` (n, 4: absolute
        ``xyxy`` in original image pixels), and ``image_id`` unless ``image_ids`` gives the ids in the same order.
        Post-process with ``threshold=0.0``: low-scoring detections still shape the precision-recall curve. An image
        with no detections must still be passed (empty tensors) so that it is known to have been seen.
        """
        if self._gathered:
            raise RuntimeError("update() after gather(): call reset() to start a new evaluation.")
        if image_ids is not None and len(image_ids) != len(predictions):
            raise ValueError(f"Got {len(predictions)} predictions but {len(image_ids)} image ids.")
        for index, prediction in enumerate(predictions):
            raw_id = image_ids[index] if image_ids is not None else prediction.get("image_id")
            if raw_id is None:
                raise ValueError(f"Prediction {index} of the batch has no 'image_id' (and no image_ids were given).")
            image_id = int(raw_id.item() if isinstance(raw_id, (torch.Tensor, np.ndarray)) else raw_id)
            if image_id not in self._image_ids:
                raise ValueError(
                    f"Prediction {index} of the batch has image_id {image_id}, which is not in the ground truth."
                )
            try:
                boxes = _as_tensor(prediction["boxes"])
                scores = _as_numpy(prediction["scores"])
                labels = _as_numpy(prediction["labels"])
            except KeyError as error:
                raise ValueError(f"Prediction for image_id {image_id} lacks {error}.") from None
            num = scores.shape[0] if scores.ndim == 1 else -1
            if boxes.shape != (num, 4) or labels.shape != (num,):
                raise ValueError(
                    f"Prediction for image_id {image_id}: expected scores (n,), labels (n,) and boxes (n, 4), got "
                    f"{tuple(scores.shape)}, {tuple(labels.shape)} and {tuple(boxes.shape)}."
                )
            labels = labels.astype(np.int64)
            bad = (labels < 0) | (labels >= len(self._label_lookup))
            category_ids = self._label_lookup[np.where(bad, 0, labels)]
            bad |= category_ids < 0
            if bad.any():
                raise ValueError(
                    f"Prediction for image_id {image_id} has label {labels[bad][0]}, which has no COCO category "
                    f"(label_to_category_id: {self.label_to_category_id})."
                )
            if not torch.isfinite(boxes).all() or not np.isfinite(scores).all():
                raise ValueError(f"Prediction for image_id {image_id} has non-finite boxes or scores.")
            self._store(image_id, (xyxy_to_xywh(boxes).numpy(), scores, category_ids))

    def gather(self) -> None:
        """Give every process the predictions of all processes, each image once (first arrival wins).

        Call it on every process after the last ``update()``; it goes through ``accelerate.utils.gather_object``,
        so it is a no-op when torch.distributed is not in use. Deduplicating by image id (rather than
        ``gather_for_metrics``' drop-the-tail rule) is robust to any padding scheme and to uneven dataloaders.
        """
        from accelerate.utils import gather_object

        if self._gathered:
            raise RuntimeError("gather() was already called; call reset() before the next evaluation.")
        gathered = gather_object([(list(self._predictions.items()), self.num_duplicates)])
        self.reset()
        self.num_duplicates = sum(duplicates for _, duplicates in gathered)
        for entries, _ in gathered:
            for image_id, entry in entries:
                self._store(image_id, entry)
        self._gathered = True

    # -- evaluation ---------------------------------------------------------------------------------------------------

    def _flat_detections(self) -> tuple[list[int], list[list[float]], list[float], list[int]]:
        """Image ids, xywh boxes, scores and category ids of every detection, by image id then arrival order."""
        order = sorted(self._predictions)
        entries = [self._predictions[image_id] for image_id in order]
        counts = [len(scores) for _, scores, _ in entries]
        if not entries or sum(counts) == 0:
            return [], [], [], []
        image_ids = np.repeat(np.asarray(order, dtype=np.int64), counts).tolist()
        boxes = np.concatenate([boxes for boxes, _, _ in entries]).astype(np.float64).tolist()
        scores = np.concatenate([scores for _, scores, _ in entries]).astype(np.float64).tolist()
        category_ids = np.concatenate([ids for _, _, ids in entries]).tolist()
        return image_ids, boxes, scores, category_ids

    def coco_results(self) -> list[dict[str, Any]]:
        """The accumulated detections as a COCO results list (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).

        Category ids are the ground truth's (for a converted dataset, the source's own ids), so the list, written as
        ``predictions.json``, scores against the original COCO annotation file with ``COCO.loadRes``.
        """
        return [
            {"image_id": i, "category_id": c, "bbox": b, "score": s} for i, b, s, c in zip(*self._flat_detections())
        ]

    def _detections_dataset(self) -> dict[str, Any]:
        """The detections as a COCO dataset, as ``COCO.loadRes`` would build it (which fails on an empty list)."""
        annotations = [
            {"id": n, "image_id": i, "category_id": c, "bbox": b, "score": s, "area": b[2] * b[3], "iscrowd": 0}
            for n, (i, b, s, c) in enumerate(zip(*self._flat_detections()), start=1)
        ]
        return {
            "images": self.ground_truth["images"],
            "categories": self.ground_truth["categories"],
            "annotations": annotations,
        }

    def _max_dets(self) -> list[int]:
        return sorted({t for t in (1, 10) if t < self.max_detections} | {self.max_detections})

    def run_coco_eval(self) -> Any:
        """Run the backend's COCOeval (evaluate + accumulate) and return it, for PR curves and other analyses."""
        quiet = not self.verbose
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            if self.backend == "pycocotools":
                from pycocotools.coco import COCO
                from pycocotools.cocoeval import COCOeval

                coco_gt, coco_dt = COCO(), COCO()
                coco_gt.dataset, coco_dt.dataset = self.ground_truth, self._detections_dataset()
                coco_gt.createIndex()
                coco_dt.createIndex()
                coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
            else:
                from faster_coco_eval import COCO, COCOeval_faster

                print_function = (lambda *args, **kwargs: None) if quiet else print
                coco_gt = COCO(self.ground_truth, print_function=print_function)
                coco_dt = COCO(self._detections_dataset(), print_function=print_function)
                coco_eval = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=print_function)
            coco_eval.params.maxDets = self._max_dets()
            coco_eval.evaluate()
            coco_eval.accumulate()
            # pycocotools' summary hard-codes maxDets (1, 10, 100)
            if self.verbose and (self.backend == "faster_coco_eval" or self._max_dets() == [1, 10, 100]):
                coco_eval.summarize()
        return coco_eval

    def compute(self) -> dict[str, float | dict[str, float]]:
        """COCO metrics over every ground-truth image, under torchmetrics' names, JSON-ready.

        Keys: ``map``, ``map_50``, ``map_75``, ``map_small``, ``map_medium``, ``map_large``, ``mar_1``, ``mar_10``,
        ``mar_<max_detections>``, ``mar_small``, ``mar_medium``, ``mar_large``, and per class (name -> value, every
        class of the ground truth, -1 for a class without ground-truth boxes): ``map_per_class``,
        ``map_50_per_class``, ``mar_<max_detections>_per_class``. Images that never got an ``update()`` count as
        images without detections (their boxes are missed); a warning says how many.
        """
        unseen = len(self._image_ids) - len(self._predictions)
        if unseen:
            logger.warning(
                "%d of %d ground-truth images received no predictions; they count as images without detections.%s",
                unseen,
                len(self._image_ids),
                "" if self._gathered else " In a distributed run, call gather() on every process before compute().",
            )
        coco_eval = self.run_coco_eval()
        return self._metrics(coco_eval)

    def _metrics(self, coco_eval: Any) -> dict[str, float | dict[str, float]]:
        params = coco_eval.params
        precision = np.asarray(coco_eval.eval["precision"])  # [iou, recall, class, area, max_dets]
        recall = np.asarray(coco_eval.eval["recall"])  # [iou, class, area, max_dets]
        iou_index = {t: int(np.flatnonzero(np.isclose(params.iouThrs, t))[0]) for t in (0.5, 0.75)}
        area_index = {name: params.areaRngLbl.index(name) for name in ("all", *_AREA_NAMES)}
        max_dets = list(params.maxDets)
        last = max_dets.index(self.max_detections)

        def mean(values: np.ndarray) -> float:
            # COCOeval.summarize's reduction: the mean of the defined (> -1) entries, else -1
            defined = values[values > -1]
            return float(np.mean(defined)) if defined.size else -1.0

        metrics: dict[str, Any] = {
            "map": mean(precision[:, :, :, area_index["all"], last]),
            "map_50": mean(precision[iou_index[0.5], :, :, area_index["all"], last]),
            "map_75": mean(precision[iou_index[0.75], :, :, area_index["all"], last]),
        }
        for name in _AREA_NAMES:
            metrics[f"map_{name}"] = mean(precision[:, :, :, area_index[name], last])
        for m, limit in enumerate(max_dets):
            metrics[f"mar_{limit}"] = mean(recall[:, :, area_index["all"], m])
        for name in _AREA_NAMES:
            metrics[f"mar_{name}"] = mean(recall[:, :, area_index[name], last])

        # COCOeval's class axis follows sorted category ids; per-class results follow the ground truth's order
        # (label order for a dataset), whatever ids the source used
        column = {int(c): k for k, c in enumerate(params.catIds)}
        classes = [(c["name"], column[c["id"]]) for c in self.ground_truth["categories"]]
        all_areas = area_index["all"]
        metrics["map_per_class"] = {n: mean(precision[:, :, k, all_areas, last]) for n, k in classes}
        metrics["map_50_per_class"] = {n: mean(precision[iou_index[0.5], :, k, all_areas, last]) for n, k in classes}
        metrics[f"mar_{self.max_detections}_per_class"] = {n: mean(recall[:, k, all_areas, last]) for n, k in classes}
        return metrics


# --------------------------------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------------------------------


def _cell(value: float | None) -> str:
    return "-" if value is None or value < 0 else f"{value:.3f}"


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A fixed-width text table of ``CocoEvaluator.compute()``'s output: overall AP/AR, then AP, AP50, AR per class.

    ``-`` marks an undefined value (-1): no ground truth in that class or area range.
    """
    recall_limits = sorted(int(k[4:]) for k in metrics if k.startswith("mar_") and k[4:].isdigit())
    top = recall_limits[-1] if recall_limits else 100
    overall = [
        ("AP", "map"),
        ("AP50", "map_50"),
        ("AP75", "map_75"),
        ("APs", "map_small"),
        ("APm", "map_medium"),
        ("APl", "map_large"),
        *[(f"AR{limit}", f"mar_{limit}") for limit in recall_limits],
        ("ARs", "mar_small"),
        ("ARm", "mar_medium"),
        ("ARl", "mar_large"),
    ]
    overall = [(title, key) for title, key in overall if key in metrics]
    width = max(6, *(len(title) + 1 for title, _ in overall))
    lines = [
        "".join(f"{title:>{width}}" for title, _ in overall),
        "".join(f"{_cell(metrics[key]):>{width}}" for _, key in overall),
    ]

    per_class = metrics.get("map_per_class")
    if per_class:
        ap50 = metrics.get("map_50_per_class", {})
        ar = metrics.get(f"mar_{top}_per_class", {})
        columns = ("AP", "AP50", f"AR{top}")
        name_width = max(len("class"), len("all"), *(len(name) for name in per_class))
        rule = "-" * (name_width + 2 + width * len(columns))
        lines += ["", f"{'class':<{name_width}}  " + "".join(f"{c:>{width}}" for c in columns), rule]
        for name, value in per_class.items():
            cells = (_cell(value), _cell(ap50.get(name)), _cell(ar.get(name)))
            lines.append(f"{name:<{name_width}}  " + "".join(f"{c:>{width}}" for c in cells))
        lines.append(rule)
        totals = (_cell(metrics.get("map")), _cell(metrics.get("map_50")), _cell(metrics.get(f"mar_{top}")))
        lines.append(f"{'all':<{name_width}}  " + "".join(f"{c:>{width}}" for c in totals))
        if any(v < 0 for v in per_class.values()):
            lines.append("(- : no ground-truth boxes of this class)")
    return "\n".join(lines)


@torch.no_grad()
def evaluate_detector(
    model: torch.nn.Module,
    image_processor: Any,
    dataloader: Any,
    ground_truth: Dataset,
    accelerator: Any = None,
    *,
    show_progress: bool = True,
) -> tuple[dict[str, Any] | None, CocoEvaluator]:
    """COCO metrics of `model` over a dataloader of collated batches (``pixel_values``, ``pixel_mask``, ``labels``
    with ``orig_size`` and ``image_id``), each image counted once across processes.

    Returns the metrics (None off the main process under Accelerate) and the evaluator holding every detection.
    """
    from tqdm.auto import tqdm

    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    was_training = model.training
    model.eval()
    evaluator = CocoEvaluator(ground_truth, id2label=unwrapped.config.id2label)
    device = next(unwrapped.parameters()).device
    is_main = accelerator is None or accelerator.is_main_process
    for batch in tqdm(dataloader, desc="evaluating", disable=not (show_progress and is_main), leave=False):
        outputs = model(pixel_values=batch["pixel_values"].to(device), pixel_mask=batch["pixel_mask"].to(device))
        sizes = [label["orig_size"].tolist() for label in batch["labels"]]
        results = image_processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        evaluator.update(results, image_ids=[label["image_id"] for label in batch["labels"]])
    evaluator.gather()
    model.train(was_training)
    return (evaluator.compute() if is_main else None), evaluator
