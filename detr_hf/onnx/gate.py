"""The accuracy gate on an exported artifact: its outputs against PyTorch's on sample images and, given a
validation split, its COCO mAP against the model's with the same evaluation code. ``export_report.json`` records
both; :class:`ExportGateError` says which outputs diverged when the artifact is not accurate enough.

Defaults, per precision (see docs/export.md):

- ``--max-ap-drop``: fp32 0.001 (an fp32 graph computes the same function: only summation order differs), fp16
  0.005 (half precision moves boxes by about a pixel at 1000 px and scores near the threshold), int8 0.01 (int8
  weights: a 1-point drop is the usual price of dynamic quantization).
- largest |Δ| on sample images (logits; boxes, normalized): fp32 1e-3 / 1e-3; fp16 0.1 / 0.01; int8 2.0 / 0.2.
  The fp32 check catches a broken graph; for fp16 and int8 it catches a broken conversion. With ``--validate``,
  an fp16/int8 artifact is judged by its mAP (see :func:`gate_failures`); an fp32 one must pass both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .export import model_inputs, sample_images
from .runtime import OnnxDetector

MAX_AP_DROP = {"fp32": 0.001, "fp16": 0.005, "int8": 0.01}
OUTPUT_TOLERANCE = {
    "fp32": {"logits": 1e-3, "pred_boxes": 1e-3},
    "fp16": {"logits": 0.1, "pred_boxes": 0.01},
    "int8": {"logits": 2.0, "pred_boxes": 0.2},
}


class ExportGateError(RuntimeError):
    """The exported artifact is not as accurate as the model (the message says which outputs diverged)."""


@torch.no_grad()
def output_differences(model: torch.nn.Module, detector: OnnxDetector, images: list[Any]) -> dict[str, float]:
    """Largest |Δ| of ``logits`` and ``pred_boxes`` between `model` and the artifact on `images` (one padded
    batch, processed by the artifact's processor)."""
    pixel_values, pixel_mask = model_inputs(detector.processor, images)
    reference = model(pixel_values=pixel_values, pixel_mask=pixel_mask, return_dict=True)
    logits, boxes = detector.run(pixel_values.numpy(), pixel_mask.numpy().astype(np.int64))
    return {
        "logits": float(np.abs(logits.astype(np.float32) - reference.logits.numpy()).max()),
        "pred_boxes": float(np.abs(boxes.astype(np.float32) - reference.pred_boxes.numpy()).max()),
    }


def compare_map(model: torch.nn.Module, detector: OnnxDetector, dataset: Any, batch_size: int = 4) -> dict[str, Any]:
    """mAP and AP50 of `model` and of the artifact on a detection split, both through the artifact's processor and
    :func:`~detr_hf.evaluation.evaluate_images` (so only the runtime differs)."""
    from ..evaluation import evaluate_images
    from ..inference import TorchDetector

    torch_metrics, _ = evaluate_images(
        TorchDetector(model, detector.processor), dataset, batch_size, show_progress=False
    )
    onnx_metrics, _ = evaluate_images(detector, dataset, batch_size, show_progress=False)
    return {
        "images": len(dataset),
        "model": {"map": torch_metrics["map"], "map_50": torch_metrics["map_50"]},
        "artifact": {"map": onnx_metrics["map"], "map_50": onnx_metrics["map_50"]},
        "map_drop": torch_metrics["map"] - onnx_metrics["map"],
        "map_50_drop": torch_metrics["map_50"] - onnx_metrics["map_50"],
    }


def gate_failures(report: dict[str, Any]) -> list[str]:
    """What fails the gate in a report. Each output over its tolerance fails it, except for an fp16/int8 artifact
    checked with a validation split: there the mAP drop decides (a rounding can flip which proposal a two-stage model
    keeps, a large |Δ| on one query that costs no AP) and the outputs' |Δ| explain a failure."""
    differences, tolerance = report["max_abs_diff"], report["tolerance"]
    outputs = [
        f"{name} {'diverged' if not differences[name] <= tolerance[name] else 'within tolerance'}: "
        f"max |Δ| {differences[name]:.3g} {'>' if not differences[name] <= tolerance[name] else '<='} "
        f"{tolerance[name]:.3g}"
        for name in ("logits", "pred_boxes")
    ]
    diverged = [line for line in outputs if " diverged" in line]  # NaN diverges too
    validation = report.get("validation")
    if validation is None:
        return diverged
    failures = [] if report.get("precision", "fp32") != "fp32" else list(diverged)
    if not validation["map_drop"] <= report["max_ap_drop"]:
        model, artifact = validation["model"], validation["artifact"]
        failures.append(
            f"mAP dropped by {validation['map_drop']:.4f} > {report['max_ap_drop']} (model {model['map']:.4f}, "
            f"artifact {artifact['map']:.4f}; AP50 {model['map_50']:.4f} -> {artifact['map_50']:.4f})"
        )
        failures += [line for line in outputs if line not in failures]
    return failures


def gate_artifact(
    model: torch.nn.Module,
    folder: str | Path,
    precision: str = "fp32",
    *,
    validation: Any = None,
    max_ap_drop: float | None = None,
    tolerance: dict[str, float] | None = None,
    settings: dict[str, Any] | None = None,
    num_samples: int = 4,
) -> dict[str, Any]:
    """Checks the artifact in `folder` against `model`, writes ``export_report.json`` there and returns it; raises
    :class:`ExportGateError` when it fails (the report is written either way).

    Args:
        validation: a detection split (``datasets.Dataset``); its mAP is compared, and its first images join the
            output check.
        max_ap_drop: the largest allowed mAP drop (default per precision, :data:`MAX_AP_DROP`).
        tolerance: largest |Δ| allowed per output (default per precision, :data:`OUTPUT_TOLERANCE`).
        settings: the export's settings (``export_folder``'s return), recorded first in the report.
    """
    folder = Path(folder)
    model = model.eval()
    detector = OnnxDetector(folder)
    images = sample_images(num_samples)
    if validation is not None:
        images += list(validation.select(range(min(4, len(validation))))["image"])
    differences = output_differences(model, detector, images)
    report: dict[str, Any] = {
        **(settings or {}),
        "precision": precision,
        "sample_images": [list(np.asarray(image).shape[:2]) for image in images],
        "max_abs_diff": differences,
        "tolerance": {**OUTPUT_TOLERANCE[precision], **(tolerance or {})},
        "max_ap_drop": MAX_AP_DROP[precision] if max_ap_drop is None else float(max_ap_drop),
        "validation": compare_map(model, detector, validation) if validation is not None else None,
    }
    failures = gate_failures(report)
    report["passed"], report["failures"] = not failures, failures
    (folder / "export_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if failures:
        raise ExportGateError(f"{folder / 'model.onnx'} failed the accuracy gate: " + "; ".join(failures))
    return report


__all__ = ["MAX_AP_DROP", "OUTPUT_TOLERANCE", "ExportGateError", "compare_map", "gate_artifact", "gate_failures"]
