"""Bootstrap 95% confidence intervals on mAP and per-class AP, resampling images.

COCOeval's per-image verdicts (``evalImgs``: each detection's match at the ten IoU thresholds, after the per-image
``maxDets`` cut) are computed once, by pycocotools. A resample draws the images with replacement; an image drawn
``w`` times weighs ``w`` in the cumulative true/false-positive counts and in the ground-truth count, and COCO's
accumulation (101-point interpolated precision, mean over IoU 0.5:0.95 and classes) is redone on the weighted counts.
With every weight 1 this is exactly COCO's AP. The interval is the 2.5th to 97.5th percentile over the resamples.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .coco_evaluator import CocoEvaluator


@dataclass
class _ClassVerdicts:
    image: np.ndarray  # (N,) image index of each detection, in COCO's accumulation order
    tp: np.ndarray  # (T, N) bool: a true positive at each IoU threshold
    fp: np.ndarray  # (T, N) bool: a false positive (neither matched nor ignored)
    num_gt: np.ndarray  # (I,) non-ignored ground-truth boxes per image


@dataclass
class PerImageVerdicts:
    """COCOeval's per-image results for every class (area "all", the largest ``maxDets``)."""

    classes: list[str]  # names, in the ground truth's category order
    verdicts: list[_ClassVerdicts]
    num_images: int
    rec_thresholds: np.ndarray  # (101,)


def per_image_verdicts(evaluator: CocoEvaluator) -> PerImageVerdicts:
    """Run pycocotools' ``COCOeval.evaluate`` once on the evaluator's ground truth and stored detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset, coco_dt.dataset = evaluator.ground_truth, evaluator._detections_dataset()
        coco_gt.createIndex()
        coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        params = coco_eval.params
        params.maxDets = [evaluator.max_detections]
        params.areaRng, params.areaRngLbl = [[0.0, 1e10]], ["all"]
        coco_eval.evaluate()
    image_ids, category_ids = list(params.imgIds), list(params.catIds)
    num_t = len(params.iouThrs)
    verdicts = {}
    for k, category_id in enumerate(category_ids):
        entries = coco_eval.evalImgs[k * len(image_ids) : (k + 1) * len(image_ids)]
        scores, images, tps, fps = [], [], [], []
        num_gt = np.zeros(len(image_ids))
        for i, entry in enumerate(entries):
            if entry is None:
                continue
            num_gt[i] = int((np.asarray(entry["gtIgnore"]) == 0).sum())
            n = len(entry["dtScores"])
            if n == 0:
                continue
            matched = np.asarray(entry["dtMatches"]).reshape(num_t, n) > 0
            ignored = np.asarray(entry["dtIgnore"]).reshape(num_t, n).astype(bool)
            scores.append(np.asarray(entry["dtScores"], dtype=np.float64))
            images.append(np.full(n, i))
            tps.append(matched & ~ignored)
            fps.append(~matched & ~ignored)
        if scores:
            order = np.argsort(-np.concatenate(scores), kind="mergesort")  # COCO's accumulation order
            image = np.concatenate(images)[order]
            tp = np.concatenate(tps, axis=1)[:, order]
            fp = np.concatenate(fps, axis=1)[:, order]
        else:
            image = np.zeros(0, dtype=np.int64)
            tp, fp = np.zeros((num_t, 0), dtype=bool), np.zeros((num_t, 0), dtype=bool)
        verdicts[category_id] = _ClassVerdicts(image, tp, fp, num_gt)
    categories = evaluator.ground_truth["categories"]
    return PerImageVerdicts(
        [c["name"] for c in categories],
        [verdicts[c["id"]] for c in categories],
        len(image_ids),
        np.asarray(params.recThrs),
    )


def _precision_at_recalls(
    verdicts: _ClassVerdicts, t: int, weights: np.ndarray, rec_thresholds: np.ndarray
) -> np.ndarray:
    """(R, 101) interpolated precision at IoU index ``t`` under image weights (R, I); rows of -1 where the class has
    no ground truth.

    COCO's interpolated precision at recall r is the best precision at or after the first detection reaching r, and
    precision peaks at true positives, so only the true positives' positions are needed: at each, the cumulative
    counts are ``weights @ per-image counts`` (a matrix product instead of a cumulative sum over every detection).
    """
    num_r, num_images = weights.shape
    out = np.zeros((num_r, len(rec_thresholds)))
    num_gt = weights @ verdicts.num_gt.astype(weights.dtype)  # (R,)
    out[num_gt == 0] = -1.0
    hits = np.flatnonzero(verdicts.tp[t])
    if hits.size == 0:
        return out
    image = verdicts.image
    tp_counts = np.zeros((hits.size, num_images), dtype=weights.dtype)
    tp_counts[np.arange(hits.size), image[hits]] = 1
    np.cumsum(tp_counts, axis=0, out=tp_counts)  # (K, I): true positives of each image up to the k-th
    misses = np.flatnonzero(verdicts.fp[t])
    fp_counts = np.zeros((hits.size + 1, num_images), dtype=weights.dtype)
    np.add.at(fp_counts, (np.searchsorted(hits, misses), image[misses]), 1)
    fp_counts = np.cumsum(fp_counts, axis=0)[: hits.size]  # (K, I): false positives of each image before the k-th
    tps, fps = weights @ tp_counts.T, weights @ fp_counts.T  # (R, K)
    recall = tps / np.maximum(num_gt, 1e-12)[:, None]
    precision = tps / (tps + fps + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # COCO's envelope
    for r in np.flatnonzero(num_gt > 0):
        index = np.searchsorted(recall[r], rec_thresholds, side="left")
        valid = index < hits.size
        out[r, valid] = precision[r, index[valid]]
    return out


def _class_precision(verdicts: _ClassVerdicts, weights: np.ndarray, rec_thresholds: np.ndarray) -> np.ndarray:
    """(R, T, 101) interpolated precision under image weights (R, I); -1 where the class has no ground truth."""
    num_t = verdicts.tp.shape[0]
    return np.stack([_precision_at_recalls(verdicts, t, weights, rec_thresholds) for t in range(num_t)], axis=1)


@dataclass
class BootstrapResult:
    """Point estimates (COCO's numbers) and 95% intervals; per-class values keyed by class name, nan if undefined."""

    point: dict[str, float]  # map, map_50
    interval: dict[str, tuple[float, float]]
    per_class_point: dict[str, dict[str, float]]  # "map" / "map_50" -> class -> value
    per_class_interval: dict[str, dict[str, tuple[float, float]]]
    num_resamples: int
    num_images: int


def _reduce(precision: np.ndarray) -> np.ndarray:
    """Mean over the trailing axes of the defined (> -1) entries, per leading row; nan when none."""
    flat = precision.reshape(precision.shape[0], -1)
    defined = flat > -1
    total = np.where(defined, flat, 0.0).sum(axis=1)
    count = defined.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _statistics(verdicts: PerImageVerdicts, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of weights (R, I): map, map_50 (R,) and per class (R, C)."""
    per_class = [_class_precision(v, weights, verdicts.rec_thresholds) for v in verdicts.verdicts]
    stacked = np.stack(per_class, axis=2)  # (R, T, C, 101)
    return {
        "map": _reduce(stacked),
        "map_50": _reduce(stacked[:, :1]),
        "class_map": np.stack([_reduce(p) for p in per_class], axis=1),
        "class_map_50": np.stack([_reduce(p[:, :1]) for p in per_class], axis=1),
    }


def bootstrap_ap(
    verdicts: PerImageVerdicts, num_resamples: int = 500, seed: int = 0, chunk: int = 250
) -> BootstrapResult:
    """mAP, mAP@0.5 and per-class AP with 95% percentile intervals over ``num_resamples`` image resamples."""
    rng = np.random.default_rng(seed)
    num_images = verdicts.num_images
    point = _statistics(verdicts, np.ones((1, num_images)))
    samples: dict[str, list[np.ndarray]] = {key: [] for key in point}
    for start in range(0, num_resamples, chunk):
        size = min(chunk, num_resamples - start)
        drawn = rng.integers(0, num_images, size=(size, num_images))
        weights = np.stack([np.bincount(row, minlength=num_images) for row in drawn]).astype(np.float32)
        for key, value in _statistics(verdicts, weights).items():
            samples[key].append(value)
    stacked = {key: np.concatenate(values) for key, values in samples.items()}

    def interval(values: np.ndarray) -> tuple[float, float]:
        values = values[np.isfinite(values)]
        if not values.size:
            return (float("nan"), float("nan"))
        low, high = np.percentile(values, [2.5, 97.5])
        return float(low), float(high)

    names = verdicts.classes
    return BootstrapResult(
        point={key: float(point[key][0]) for key in ("map", "map_50")},
        interval={key: interval(stacked[key]) for key in ("map", "map_50")},
        per_class_point={
            key: {n: float(point[f"class_{key}"][0, c]) for c, n in enumerate(names)} for key in ("map", "map_50")
        },
        per_class_interval={
            key: {n: interval(stacked[f"class_{key}"][:, c]) for c, n in enumerate(names)} for key in ("map", "map_50")
        },
        num_resamples=num_resamples,
        num_images=num_images,
    )


def bootstrap_sums(per_image: np.ndarray, num_resamples: int = 500, seed: int = 0) -> np.ndarray:
    """Resampled column sums of per-image counts ``(I, K)``: ``(num_resamples, K)``; for ratios of counts (precision,
    recall at a threshold) resample numerator and denominator together."""
    rng = np.random.default_rng(seed)
    num_images = per_image.shape[0]
    drawn = rng.integers(0, num_images, size=(num_resamples, num_images))
    weights = np.stack([np.bincount(row, minlength=num_images) for row in drawn]).astype(np.float64)
    return weights @ per_image


def format_interval(value: float | None, interval: tuple[float, float] | None, digits: int = 3) -> str:
    """``0.512 [0.471, 0.553]``; ``-`` for an undefined value."""
    if value is None or not np.isfinite(value) or value < 0:
        return "-"
    if interval is None or not all(np.isfinite(interval)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def result_as_dict(result: BootstrapResult) -> dict[str, Any]:
    """JSON-ready form (nan -> None)."""

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [clean(v) for v in value]
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value

    return clean(
        {
            "num_resamples": result.num_resamples,
            "num_images": result.num_images,
            "point": result.point,
            "interval_95": result.interval,
            "per_class_point": result.per_class_point,
            "per_class_interval_95": result.per_class_interval,
        }
    )
