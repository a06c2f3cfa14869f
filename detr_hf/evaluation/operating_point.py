"""Per-class precision, recall and F1 against the score threshold, and the threshold to run each class at.

A detection counts as a true positive when it matched a ground-truth box of its class at IoU 0.5
(:mod:`detr_hf.evaluation.matching`); detections that only found a crowd region are left out, as are crowd boxes from
the ground-truth count. Keeping the detections scoring at least ``t`` gives, per class, ``precision(t)``, ``recall(t)``
and ``F1(t)``; the suggested threshold is the one of highest F1, or with ``target_precision`` the lowest threshold whose
precision reaches the target (the most recall at that precision).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .matching import ImageMatches

DEFAULT_THRESHOLD = 0.5  # for a class the split says nothing about (no detections or no ground truth)


@dataclass
class ClassCurve:
    """One class's counts at every distinct score, highest first: keeping detections with score >= ``thresholds[i]``
    gives ``tp[i]`` true and ``fp[i]`` false positives out of ``num_gt`` ground-truth boxes."""

    thresholds: np.ndarray  # (n,) decreasing
    tp: np.ndarray  # (n,)
    fp: np.ndarray  # (n,)
    num_gt: int

    @property
    def precision(self) -> np.ndarray:
        return self.tp / np.maximum(self.tp + self.fp, 1)

    @property
    def recall(self) -> np.ndarray:
        return self.tp / max(self.num_gt, 1)

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)


@dataclass
class ClassOperatingPoint:
    """The suggested threshold of one class and what the split says it gives (None where undefined)."""

    threshold: float
    precision: float | None
    recall: float | None
    f1: float | None
    num_gt: int
    rule: str  # "max_f1", "target_precision", "target_unreached (max_f1)", or "default" (no data, or nothing right)


def class_curves(images: Sequence[ImageMatches], num_labels: int) -> list[ClassCurve]:
    """The precision/recall curve of each label ``0..num_labels-1`` over matched images."""
    scores = np.concatenate([m.det_scores[~m.det_ignored] for m in images] or [np.zeros(0)])
    labels = np.concatenate([m.det_labels[~m.det_ignored] for m in images] or [np.zeros(0, dtype=np.int64)])
    correct = np.concatenate([m.det_correct[~m.det_ignored] for m in images] or [np.zeros(0, dtype=bool)])
    gt_labels = np.concatenate([m.gt_labels[~m.gt_crowd] for m in images] or [np.zeros(0, dtype=np.int64)])
    curves = []
    for label in range(num_labels):
        mine = labels == label
        order = np.argsort(-scores[mine], kind="stable")
        s, hit = scores[mine][order], correct[mine][order]
        tp, fp = np.cumsum(hit), np.cumsum(~hit)
        last_of_tie = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)
        curves.append(ClassCurve(s[last_of_tie], tp[last_of_tie], fp[last_of_tie], int((gt_labels == label).sum())))
    return curves


def suggest_threshold(curve: ClassCurve, target_precision: float | None = None) -> ClassOperatingPoint:
    """The threshold of highest F1 (ties: the highest threshold), or the lowest one reaching ``target_precision``.

    The threshold returned lies halfway between the chosen score and the next lower one, so that keeping scores
    ``> t`` (as post-processing does) and ``>= t`` select the same detections on this split.
    """
    if len(curve.thresholds) == 0 or curve.num_gt == 0:
        return ClassOperatingPoint(DEFAULT_THRESHOLD, None, None, None, curve.num_gt, "default")
    if curve.tp[-1] == 0:  # no detection of the class is right: every threshold gives F1 = 0
        return ClassOperatingPoint(DEFAULT_THRESHOLD, 0.0, 0.0, 0.0, curve.num_gt, "default")
    f1, rule = curve.f1, "max_f1"
    index = int(np.argmax(f1))
    if target_precision is not None:
        reaching = np.flatnonzero(curve.precision >= target_precision)
        if reaching.size:
            index, rule = int(reaching[-1]), "target_precision"
        else:
            rule = "target_unreached (max_f1)"
    below = float(curve.thresholds[index + 1]) if index + 1 < len(curve.thresholds) else 0.0
    return ClassOperatingPoint(
        (float(curve.thresholds[index]) + below) / 2,
        float(curve.precision[index]),
        float(curve.recall[index]),
        float(f1[index]),
        curve.num_gt,
        rule,
    )


def operating_points(
    images: Sequence[ImageMatches], id2label: Mapping[int, str], target_precision: float | None = None
) -> tuple[dict[str, ClassOperatingPoint], list[ClassCurve]]:
    """Suggested operating point per class name, and the curves they were read from (in label order)."""
    if target_precision is not None and not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}.")
    curves = class_curves(images, len(id2label))
    points = {id2label[label]: suggest_threshold(curve, target_precision) for label, curve in enumerate(curves)}
    return points, curves


def thresholds_by_label(points: Mapping[str, ClassOperatingPoint], id2label: Mapping[int, str]) -> dict[str, float]:
    """``{"0": t, "1": t, ...}``: the form saved in the model's config (JSON keys are strings)."""
    return {str(label): points[name].threshold for label, name in sorted(id2label.items())}


def plot_curves(curves: Sequence[ClassCurve], names: Sequence[str], points: Sequence[ClassOperatingPoint], path: Path):
    """Precision, recall and F1 against threshold, one panel per class, the suggested threshold marked; saved to
    ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, max(1, len(curves)))
    rows = -(-len(curves) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for ax, curve, name, point in zip(axes.flat, curves, names, points):
        if len(curve.thresholds):
            ax.plot(curve.thresholds, curve.precision, label="precision")
            ax.plot(curve.thresholds, curve.recall, label="recall")
            ax.plot(curve.thresholds, curve.f1, label="F1")
        if point.rule != "default":
            ax.axvline(point.threshold, color="k", linestyle=":", linewidth=1)
        ax.set(title=f"{name} (t={point.threshold:.2f})", xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold")
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    if axes.flat[0].lines:
        axes.flat[0].legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def apply_operating_point(
    model_config: Any, processor: Any, thresholds: Mapping[str, float] | None, temperature: float | None
) -> None:
    """Set ``detection_thresholds`` and ``score_temperature`` on a model config and its image processor (in memory).

    ``temperature`` multiplies any temperature already set: the report measured scores that had it applied.
    """
    previous = getattr(model_config, "score_temperature", None) or getattr(processor, "score_temperature", None)
    if temperature is not None:
        temperature = float(temperature) * float(previous or 1.0)
    else:
        temperature = previous
    for target in (model_config, processor):
        if target is None:
            continue
        if thresholds is not None:
            target.detection_thresholds = {str(k): float(v) for k, v in thresholds.items()}
        target.score_temperature = temperature


def save_operating_point(
    model_dir: str | Path, thresholds: Mapping[str, float] | None, temperature: float | None
) -> None:
    """Write the operating point into a saved model folder's ``config.json`` and ``preprocessor_config.json`` (the
    files ``load_detector`` and ``pipeline("object-detection")`` read), keeping every other key as it is."""
    import json

    folder = Path(model_dir)
    files = [folder / "config.json", folder / "preprocessor_config.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Cannot save the operating point: {missing} not found (a local model folder is needed)."
        )
    contents = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    holders = [SimpleNamespace(**c) for c in contents]
    apply_operating_point(holders[0], holders[1], thresholds, temperature)
    for path, holder in zip(files, holders):
        path.write_text(json.dumps(vars(holder), indent=2, sort_keys=True) + "\n", encoding="utf-8")
