"""``detr-hf evaluate --report DIR``: the operating-point and trust report (docs/reports.md), and ``--threshold auto``."""

from __future__ import annotations

import argparse
from typing import Any


def threshold_value(text: str) -> float | str:
    """A ``--threshold`` value: a number, or ``auto`` (the per-class thresholds saved in the model)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The report's options on ``detr-hf evaluate``."""
    p.add_argument("--report", metavar="DIR", help="write the operating-point report here (Markdown, PNGs, JSON): "
                   "per-class thresholds, confusion matrix, calibration, bootstrap intervals, error gallery")  # fmt: skip
    p.add_argument("--target-precision", type=float, help="suggest per class the lowest threshold reaching this "
                   "precision (default: the threshold of highest F1)")  # fmt: skip
    p.add_argument("--no-temperature", action="store_true", help="do not fit a temperature to the scores")
    p.add_argument("--resamples", type=int, default=500, help="bootstrap resamples of the images (default 500)")
    p.add_argument("--save-operating-point", action="store_true", help="write the suggested thresholds and the "
                   "temperature into the --model folder's config.json and preprocessor_config.json, for "
                   "threshold='auto'")  # fmt: skip


def run_report(args: argparse.Namespace, evaluator: Any, split: Any) -> None:
    """Write the report when ``--report`` was given; save the operating point when asked."""
    if args.save_operating_point and not args.report:
        raise SystemExit("detr-hf evaluate: --save-operating-point needs --report DIR")
    if not args.report:
        return
    from ..evaluation.operating_point import save_operating_point
    from ..evaluation.report import write_report

    report = write_report(
        args.report,
        evaluator,
        split,
        target_precision=args.target_precision,
        temperature_scaling=not args.no_temperature,
        num_resamples=args.resamples,
    )
    from ..evaluation.report_markdown import terminal_summary

    print(terminal_summary(report))
    print(f"report: {args.report}/report.md")
    if args.save_operating_point:
        temperature = (report["calibration"] or {}).get("temperature")
        save_operating_point(args.model, report["detection_thresholds"], temperature)
        print(f"saved the per-class thresholds{' and temperature' if temperature else ''} in {args.model}")
