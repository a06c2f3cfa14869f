"""The operating-point and trust report: one folder a person reads after training (docs/reports.md).

``write_report(folder, evaluator, dataset)`` takes a filled :class:`CocoEvaluator` (its detections at threshold 0) and
the split it scored, and writes ``report.md``, ``report.json``, ``pr_curves.png``, ``confusion_matrix.png``,
``reliability.png``, ``false_positives.png``, ``missed.png`` and ``errors.json``: COCO AP with bootstrap intervals,
per-class thresholds with precision/recall/F1 (and intervals), the confusion matrix, calibration before/after a
fitted temperature, and the error gallery. Thresholds are chosen on the calibrated scores, so the saved pair
(``detection_thresholds``, ``score_temperature``) belongs together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from .bootstrap import bootstrap_ap, bootstrap_sums, per_image_verdicts, result_as_dict
from .calibration import apply_temperature, calibrate, plot_reliability
from .coco_evaluator import CocoEvaluator
from .confusion import confusion_matrix, plot_confusion_matrix
from .error_gallery import false_positives, missed_objects, write_gallery
from .matching import ImageMatches, match_images, split_images
from .operating_point import operating_points, plot_curves, thresholds_by_label

REPORT_JSON = "report.json"


def _counts_at_thresholds(images: list[ImageMatches], thresholds: Mapping[int, float], num_labels: int) -> np.ndarray:
    """(I, 3K) per image: true positives, false positives and ground-truth boxes per label at the thresholds."""
    counts = np.zeros((len(images), 3 * num_labels))
    for row, image in enumerate(images):
        limits = np.array([thresholds[int(label)] for label in image.det_labels], dtype=np.float64)
        kept = (image.det_scores > limits) & ~image.det_ignored
        np.add.at(counts[row], image.det_labels[kept & image.det_correct], 1)
        np.add.at(counts[row], num_labels + image.det_labels[kept & ~image.det_correct], 1)
        np.add.at(counts[row], 2 * num_labels + image.gt_labels[~image.gt_crowd], 1)
    return counts


def _ratio_interval(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float]:
    defined = denominator > 0
    if not defined.any():
        return (float("nan"), float("nan"))
    low, high = np.percentile(numerator[defined] / denominator[defined], [2.5, 97.5])
    return float(low), float(high)


def build_report(
    evaluator: CocoEvaluator,
    *,
    target_precision: float | None = None,
    temperature_scaling: bool = True,
    num_resamples: int = 500,
    seed: int = 0,
) -> tuple[dict[str, Any], list[ImageMatches], dict[str, Any]]:
    """The report's numbers (JSON-ready), the matched images (scores calibrated when a temperature was fitted) and the
    figures' data. Ground-truth classes are the model's labels in order (as ``CocoEvaluator`` maps them)."""
    id2label = {label: evaluator.category_names[cid] for label, cid in sorted(evaluator.label_to_category_id.items())}
    metrics = evaluator.compute()
    images = match_images(evaluator)
    boot = bootstrap_ap(per_image_verdicts(evaluator), num_resamples=num_resamples, seed=seed)

    calibration, temperature = None, None
    fit, held_out = split_images(images)
    if temperature_scaling and held_out:
        calibration = calibrate(images, fit, held_out)
        temperature = calibration.temperature
        if temperature is not None:
            images = [replace(m, det_scores=apply_temperature(m.det_scores, temperature)) for m in images]

    points, curves = operating_points(images, id2label, target_precision)
    thresholds = {label: points[name].threshold for label, name in id2label.items()}
    sums = bootstrap_sums(_counts_at_thresholds(images, thresholds, len(id2label)), num_resamples, seed)
    k = len(id2label)
    per_class = {}
    for label, name in id2label.items():
        tp, fp, gt = sums[:, label], sums[:, k + label], sums[:, 2 * k + label]
        per_class[name] = {
            "num_gt": points[name].num_gt,
            "ap": metrics["map_per_class"].get(name),
            "ap_interval_95": boot.per_class_interval["map"][name],
            "ap50": metrics["map_50_per_class"].get(name),
            "ap50_interval_95": boot.per_class_interval["map_50"][name],
            **asdict(points[name]),
            "precision_interval_95": _ratio_interval(tp, tp + fp),
            "recall_interval_95": _ratio_interval(tp, gt),
        }
    matrix = confusion_matrix(images, k, thresholds)
    report = {
        "num_images": len(images),
        "metrics": metrics,
        "bootstrap": result_as_dict(boot),
        "per_class": per_class,
        "detection_thresholds": thresholds_by_label(points, id2label),
        "target_precision": target_precision,
        "calibration": None
        if calibration is None
        else {
            "temperature": calibration.temperature,
            "ece_before": calibration.ece_before,
            "ece_after": calibration.ece_after,
            "fit_detections": calibration.num_fit,
            "held_out_detections": calibration.num_held_out,
            "fit_images": len(fit),
            "held_out_images": len(held_out),
        },
        "confusion_matrix": {"labels": [*id2label.values(), "background"], "counts": matrix.tolist()},
    }
    figures = {"curves": curves, "points": points, "calibration": calibration, "matrix": matrix}
    return _json_ready(report), images, figures


def write_report(
    folder: str | Path,
    evaluator: CocoEvaluator,
    dataset: Any,
    *,
    target_precision: float | None = None,
    temperature_scaling: bool = True,
    num_resamples: int = 500,
    gallery_size: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the report for ``evaluator``'s detections on ``dataset`` (the split it scored, for the gallery's pixels)
    into ``folder``; returns ``report.json``'s content."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    report, images, figures = build_report(
        evaluator,
        target_precision=target_precision,
        temperature_scaling=temperature_scaling,
        num_resamples=num_resamples,
        seed=seed,
    )
    names = list(report["per_class"])
    id2label = dict(enumerate(names))
    plot_curves(figures["curves"], names, [figures["points"][n] for n in names], out / "pr_curves.png")
    plot_confusion_matrix(figures["matrix"], names, out / "confusion_matrix.png")
    if figures["calibration"] is not None:
        plot_reliability(figures["calibration"], out / "reliability.png")
    thresholds = {int(k): v for k, v in report["detection_thresholds"].items()}
    errors = write_gallery(
        false_positives(images, id2label, gallery_size), images, dataset, id2label, out / "false_positives.png"
    )
    errors += write_gallery(
        missed_objects(images, id2label, thresholds, gallery_size), images, dataset, id2label, out / "missed.png"
    )
    (out / "errors.json").write_text(json.dumps(errors, indent=2), encoding="utf-8")
    report["files"] = [*sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".json")), "report.md"]
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2), encoding="utf-8")
    from .report_markdown import report_markdown

    (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
    return report


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def report_after_training(output_dir: str | Path, model: Any, processor: Any, dataset: Any, evaluator: Any) -> None:
    """The recipe's last step: the report in ``output_dir/report``, its thresholds and temperature set on ``model`` and
    ``processor`` and written to ``output_dir/config.json`` (the processor is saved by the recipe afterwards)."""
    from .operating_point import apply_operating_point

    if evaluator is None or dataset is None:
        return
    report = write_report(Path(output_dir) / "report", evaluator, dataset)
    temperature = (report["calibration"] or {}).get("temperature")
    apply_operating_point(model.config, processor, report["detection_thresholds"], temperature)
    model.config.save_pretrained(output_dir)
    print(f"operating-point report: {Path(output_dir) / 'report' / 'report.md'}", flush=True)
