"""COCOeval's accumulated arrays reduced to torchmetrics' metric names, as ``COCOeval.summarize`` reduces them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_AREA_NAMES = ("small", "medium", "large")


def coco_metrics(
    coco_eval: Any, categories: Sequence[Mapping[str, Any]], max_detections: int
) -> dict[str, float | dict[str, float]]:
    """The metrics of an evaluated and accumulated COCOeval (see ``CocoEvaluator.compute``), per-class results keyed
    by the names of ``categories`` in their order; ``max_detections`` must be the largest of its ``maxDets``."""
    params = coco_eval.params
    precision = np.asarray(coco_eval.eval["precision"])  # [iou, recall, class, area, max_dets]
    recall = np.asarray(coco_eval.eval["recall"])  # [iou, class, area, max_dets]
    iou_index = {t: int(np.flatnonzero(np.isclose(params.iouThrs, t))[0]) for t in (0.5, 0.75)}
    area_index = {name: params.areaRngLbl.index(name) for name in ("all", *_AREA_NAMES)}
    max_dets = list(params.maxDets)
    last = max_dets.index(max_detections)

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
    classes = [(c["name"], column[c["id"]]) for c in categories]
    all_areas = area_index["all"]
    metrics["map_per_class"] = {n: mean(precision[:, :, k, all_areas, last]) for n, k in classes}
    metrics["map_50_per_class"] = {n: mean(precision[iou_index[0.5], :, k, all_areas, last]) for n, k in classes}
    metrics[f"mar_{max_detections}_per_class"] = {n: mean(recall[:, k, all_areas, last]) for n, k in classes}
    return metrics
