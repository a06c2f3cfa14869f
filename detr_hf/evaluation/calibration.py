"""Are the scores probabilities? Reliability diagram, expected calibration error, and temperature scaling.

A detection is correct when it matched a ground-truth box of its class at IoU 0.5. Over the detections scoring at
least ``min_score``, the scores are binned (equal widths); the expected calibration error (ECE) is the mean, weighted
by the share of detections in each bin, of ``|accuracy - mean score|``. A calibrated detector's 0.8-scored detections
are right 80% of the time.

Temperature scaling divides a score's log-odds by ``T``: ``sigmoid(logit(score) / T)``. For a sigmoid (focal) head that
is exactly dividing the logits by ``T`` before the sigmoid; for a softmax head it is the same map on the score, treated
as the probability of being right. It keeps the ranking (AP does not move); ``T > 1`` pulls overconfident scores
towards 0.5. ``T`` is fitted by minimising the log-loss of correctness on one part of the split and judged on the
other part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .matching import ImageMatches

_EPS = 1e-6


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(scores) / temperature)``, scores clipped to ``[1e-6, 1 - 1e-6]`` first."""
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    return 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / float(temperature)))


def scored_detections(images: Sequence[ImageMatches], min_score: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Scores (n,) and correctness (n,) bool of the non-ignored detections scoring at least ``min_score``."""
    scores = [m.det_scores[~m.det_ignored & (m.det_scores >= min_score)] for m in images]
    correct = [m.det_correct[~m.det_ignored & (m.det_scores >= min_score)] for m in images]
    return np.concatenate(scores or [np.zeros(0)]), np.concatenate(correct or [np.zeros(0, dtype=bool)])


@dataclass
class Reliability:
    """Per bin: ``edges`` (bins + 1,), ``count``, ``mean_score`` and ``accuracy`` (nan in empty bins); and the ECE."""

    edges: np.ndarray
    count: np.ndarray
    mean_score: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability(scores: np.ndarray, correct: np.ndarray, bins: int = 10) -> Reliability:
    """Equal-width bins over [0, 1]; ``ece`` is nan without detections."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(index, weights=scores, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct.astype(np.float64), minlength=bins) / count
    gaps = np.where(count > 0, np.abs(accuracy - mean_score), 0.0)
    ece = float((gaps * count).sum() / count.sum()) if count.sum() else float("nan")
    return Reliability(edges, count, mean_score, accuracy, ece)


def fit_temperature(scores: np.ndarray, correct: np.ndarray) -> float | None:
    """The ``T`` in [0.05, 20] minimising the log-loss of ``correct`` under ``sigmoid(logit(scores) / T)`` (a grid
    over log T, then a golden-section refinement); None when there is nothing to fit or one outcome only."""
    if len(scores) == 0 or correct.all() or not correct.any():
        return None
    logits = np.log(np.clip(scores, _EPS, 1 - _EPS) / (1 - np.clip(scores, _EPS, 1 - _EPS)))
    y = correct.astype(np.float64)

    def loss(log_t: float) -> float:
        z = logits / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - y * z))  # binary cross-entropy on the logit

    grid = np.linspace(np.log(0.05), np.log(20.0), 61)
    best = int(np.argmin([loss(v) for v in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if loss(a) < loss(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


@dataclass
class CalibrationResult:
    """ECE of the scores as they are and after temperature ``T``, on the held-out images; the diagrams' data."""

    temperature: float | None  # None: not fitted (no detections, or all right, or all wrong, in the fit part)
    ece_before: float
    ece_after: float
    num_fit: int  # detections the temperature was fitted on
    num_held_out: int  # detections the ECEs are measured on
    before: Reliability
    after: Reliability


def calibrate(
    images: Sequence[ImageMatches],
    fit_indices: Sequence[int],
    held_out_indices: Sequence[int],
    min_score: float = 0.05,
    bins: int = 10,
) -> CalibrationResult:
    """Fit ``T`` on the images ``fit_indices``, measure the ECE before and after on ``held_out_indices``. The held-out
    detections are chosen by their raw score, so both ECEs are over the same detections."""
    fit_scores, fit_correct = scored_detections([images[i] for i in fit_indices], min_score)
    scores, correct = scored_detections([images[i] for i in held_out_indices], min_score)
    temperature = fit_temperature(fit_scores, fit_correct)
    before = reliability(scores, correct, bins)
    after = before if temperature is None else reliability(apply_temperature(scores, temperature), correct, bins)
    return CalibrationResult(temperature, before.ece, after.ece, len(fit_scores), len(scores), before, after)


def plot_reliability(result: CalibrationResult, path: Path) -> None:
    """Reliability diagrams before and after temperature scaling, side by side; saved to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    scaled = "no temperature fitted" if result.temperature is None else f"temperature T={result.temperature:.2f}"
    panels = ((result.before, "scores as they are"), (result.after, scaled))
    for ax, (diagram, title) in zip(axes, panels):
        centers = (diagram.edges[:-1] + diagram.edges[1:]) / 2
        width = diagram.edges[1] - diagram.edges[0]
        filled = diagram.count > 0
        ax.bar(centers[filled], diagram.accuracy[filled], width=width * 0.9, color="tab:blue", label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
        ax.plot(diagram.mean_score[filled], diagram.accuracy[filled], "o", color="tab:orange", markersize=3)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="score", ylabel="share correct (IoU 0.5)")
        ax.set_title(f"{title}\nECE {diagram.ece:.3f} (held-out)", fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
