"""The evaluator: detections accumulated image by image (across processes), scored by the backend's COCOeval."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset, DatasetDict

from ..box_ops import xyxy_to_xywh
from .ground_truth import coco_ground_truth_from_dataset, label_to_category_id_by_name, load_coco_ground_truth
from .metrics import coco_metrics

logger = logging.getLogger(__name__)

Backend = Literal["faster_coco_eval", "pycocotools"]
BACKENDS: tuple[str, ...] = ("faster_coco_eval", "pycocotools")


def _as_tensor(value: Any) -> torch.Tensor:
    """A CPU tensor; half-precision floats (mixed-precision evaluation) become float32, float64 stays."""
    tensor = torch.as_tensor(value).detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()
    return tensor


def _as_numpy(value: Any) -> np.ndarray:
    return _as_tensor(value).numpy()


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
        return coco_metrics(coco_eval, self.ground_truth["categories"], self.max_detections)
