"""The confusion matrix at IoU 0.5, with a background row (false positives) and column (missed objects).

Rows are the ground-truth class, columns the predicted class; the last row and column are "background". Detections
are kept at each class's threshold, then matched to ground truth class-agnostically (COCO's greedy rule, by score):
a detection on an object of another class lands off the diagonal, one on nothing in the background row, an object
nothing matched in the background column. Crowd regions and the detections that only found one are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .matching import ImageMatches, greedy_match


def confusion_matrix(
    images: Sequence[ImageMatches],
    num_labels: int,
    thresholds: Mapping[int, float] | float = 0.5,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """``(num_labels + 1, num_labels + 1)`` int counts; index ``num_labels`` is background. A detection is kept when
    its score is above its class's threshold (a float applies to every class)."""
    matrix = np.zeros((num_labels + 1, num_labels + 1), dtype=np.int64)
    background = num_labels
    for image in images:
        if isinstance(thresholds, Mapping):
            limits = np.array([thresholds.get(int(label), 0.5) for label in image.det_labels], dtype=np.float64)
        else:
            limits = np.full(len(image.det_labels), float(thresholds))
        keep = image.det_scores > limits
        det_gt, ignored = greedy_match(
            image.gt_boxes, image.gt_labels, image.gt_crowd,
            image.det_boxes[keep], image.det_scores[keep], image.det_labels[keep], iou_threshold, class_aware=False,
        )  # fmt: skip
        det_labels = image.det_labels[keep]
        matched = det_gt >= 0
        np.add.at(matrix, (image.gt_labels[det_gt[matched]], det_labels[matched]), 1)
        np.add.at(matrix, (background, det_labels[~matched & ~ignored]), 1)
        found = np.zeros(len(image.gt_boxes), dtype=bool)
        found[det_gt[matched]] = True
        np.add.at(matrix, (image.gt_labels[~found & ~image.gt_crowd], background), 1)
    return matrix


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], path: Path) -> None:
    """The matrix as a heat map with counts, rows normalised for the colour; saved to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*names, "background"]
    size = max(4.0, 0.55 * len(labels) + 2)
    figure, ax = plt.subplots(figsize=(size, size * 0.85))
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            color = "white" if shares[row, column] > 0.6 else "black"
            ax.text(column, row, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="ground truth")
    ax.set_title("Confusion at IoU 0.5", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
