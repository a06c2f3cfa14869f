"""The operating-point report as Markdown: the report folder's ``report.md`` and the model card's section."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .bootstrap import format_interval


def _value(value: float | None, interval: Any = None) -> str:
    return format_interval(value, tuple(interval) if interval and None not in interval else None)


def _per_class_table(report: Mapping[str, Any]) -> list[str]:
    lines = [
        "| class | GT boxes | AP [95% CI] | AP50 [95% CI] | threshold | precision | recall | F1 |",
        "|---|---:|---|---|---:|---|---|---:|",
    ]
    for name, row in report["per_class"].items():
        threshold = f"{row['threshold']:.3f}" + (" (default)" if row["rule"] == "default" else "")
        precision = _value(row["precision"], row["precision_interval_95"])
        recall = _value(row["recall"], row["recall_interval_95"])
        lines.append(
            f"| {name} | {row['num_gt']} | {_value(row['ap'], row['ap_interval_95'])} | "
            f"{_value(row['ap50'], row['ap50_interval_95'])} | {threshold} | {precision} | {recall} | "
            f"{_value(row['f1'])} |"
        )
    return lines


def _overall(report: Mapping[str, Any]) -> list[str]:
    boot = report["bootstrap"]
    return [
        "| metric | value [95% CI] |",
        "|---|---|",
        f"| mAP (IoU 0.5:0.95) | {_value(boot['point']['map'], boot['interval_95']['map'])} |",
        f"| mAP50 | {_value(boot['point']['map_50'], boot['interval_95']['map_50'])} |",
    ]


def _rule_text(report: Mapping[str, Any]) -> str:
    target = report.get("target_precision")
    if target is None:
        return "the threshold of highest F1 per class"
    return f"the lowest threshold reaching precision {target} per class (highest F1 where it is never reached)"


def report_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: every section of the report with its figures (relative paths in the report folder)."""
    boot = report["bootstrap"]
    lines = [
        "# Operating-point and trust report",
        "",
        f"{report['num_images']} images. Intervals are 95% bootstrap intervals over {boot['num_resamples']} resamples "
        "of the images: two models whose intervals overlap widely may not differ at all. How to read each part: "
        "docs/reports.md in detr_hf.",
        "",
        "## COCO AP",
        "",
        *_overall(report),
        "",
        "## Per class, at the suggested thresholds (IoU 0.5)",
        "",
        f"Thresholds: {_rule_text(report)}"
        + (", on temperature-scaled scores." if (report.get("calibration") or {}).get("temperature") else "."),
        'Run the model at them with `threshold="auto"` once saved in its config.',
        "",
        *_per_class_table(report),
        "",
        "![precision, recall and F1 against the score threshold](pr_curves.png)",
        "",
        "## Confusion matrix (IoU 0.5, suggested thresholds)",
        "",
        "Rows: ground truth; columns: prediction. The background row counts false positives (detections on no object), "
        "the background column missed objects.",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
    ]
    calibration = report.get("calibration")
    if calibration and calibration["temperature"] is None:
        lines += [
            "## Calibration",
            "",
            f"Expected calibration error on {calibration['held_out_detections']} held-out detections: "
            f"{_value(calibration['ece_before'])}. No temperature was fitted: the fit part's detections are all right, "
            "all wrong, or none.",
            "",
            "![reliability diagram](reliability.png)",
            "",
        ]
    elif calibration:
        lines += [
            "## Calibration",
            "",
            f"Expected calibration error on {calibration['held_out_detections']} held-out detections "
            f"({calibration['held_out_images']} images): {_value(calibration['ece_before'])} as the scores are, "
            f"{_value(calibration['ece_after'])} after temperature T = {calibration['temperature']:.3f} "
            f"(fitted on the other {calibration['fit_images']} images).",
            "",
            "![reliability diagrams](reliability.png)",
            "",
        ]
    lines += [
        "## Error gallery",
        "",
        "Highest-scoring false positives (candidate mislabels when they cover an object of another class, candidate "
        "missing labels when they cover nothing), then the largest missed objects. The list with file names is "
        "`errors.json`.",
        "",
        "![false positives](false_positives.png)",
        "",
        "![missed objects](missed.png)",
        "",
    ]
    return "\n".join(lines)


def terminal_summary(report: Mapping[str, Any]) -> str:
    """The AP table and the per-class table with their intervals, for the terminal."""
    return "\n".join([*_overall(report), "", *_per_class_table(report)])


def model_card_section(output_dir: str | Path, report_folder: str = "report") -> list[str]:
    """The model card's lines for a report in ``output_dir/report_folder`` (none when there is no report)."""
    path = Path(output_dir) / report_folder / "report.json"
    if not path.is_file():
        return []
    report = json.loads(path.read_text(encoding="utf-8"))
    lines = [
        "",
        "## Operating point (validation split)",
        "",
        f"95% bootstrap intervals over {report['bootstrap']['num_resamples']} resamples of "
        f"{report['num_images']} images. Suggested thresholds: {_rule_text(report)}; they are saved in the config "
        'and used with `threshold="auto"`.',
        "",
        *_overall(report),
        "",
        *_per_class_table(report),
    ]
    calibration = report.get("calibration")
    if calibration and calibration["temperature"] is not None:
        lines += [
            "",
            f"Scores are temperature-scaled (T = {calibration['temperature']:.3f}): expected calibration error "
            f"{_value(calibration['ece_before'])} -> {_value(calibration['ece_after'])} on held-out images.",
        ]
    lines += ["", f"![precision, recall and F1 per class]({report_folder}/pr_curves.png)"]
    lines += [f"![confusion matrix]({report_folder}/confusion_matrix.png)"]
    if calibration:
        lines += [f"![reliability]({report_folder}/reliability.png)"]
    lines += ["", f"The full report: `{report_folder}/report.md`.", ""]
    return lines
