"""The confusion matrix at IoU 0.5 on a hand-built image."""

from __future__ import annotations

import numpy as np

from detr_hf.evaluation.confusion import confusion_matrix
from detr_hf.evaluation.matching import ImageMatches, greedy_match


def _image(gt_boxes, gt_labels, det_boxes, det_scores, det_labels, crowd=None):
    gt_boxes, det_boxes = np.asarray(gt_boxes, float).reshape(-1, 4), np.asarray(det_boxes, float).reshape(-1, 4)
    gt_labels, det_labels = np.asarray(gt_labels), np.asarray(det_labels)
    crowd = np.zeros(len(gt_labels), bool) if crowd is None else np.asarray(crowd)
    det_scores = np.asarray(det_scores, float)
    det_gt, ignored = greedy_match(gt_boxes, gt_labels, crowd, det_boxes, det_scores, det_labels)
    return ImageMatches(1, "x.png", gt_boxes, gt_labels, crowd, det_boxes, det_scores, det_labels, det_gt, ignored)


def test_counts_of_a_hand_built_case():
    gt = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10], [80, 0, 90, 10]]
    image = _image(
        gt, [0, 1, 2, 0, 1],
        # right (a on a), confused (c on b), on nothing (b), below its threshold (a on the 2nd a), duplicate of the
        # first (a on a, lower score): a false positive once the first took the object
        [[0, 0, 10, 10], [20, 0, 30, 10], [100, 100, 110, 110], [60, 0, 70, 10], [0, 0, 10, 11]],
        [0.9, 0.8, 0.7, 0.2, 0.6], [0, 2, 1, 0, 0],
    )  # fmt: skip
    matrix = confusion_matrix([image], 3, {0: 0.3, 1: 0.3, 2: 0.3})
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = 1  # a found
    expected[1, 2] = 1  # b called c
    expected[3, 1] = 1  # a b on nothing
    expected[3, 0] = 1  # the duplicate a
    expected[2, 3] = 1  # the c missed
    expected[0, 3] = 1  # the second a missed (its detection is under the threshold)
    expected[1, 3] = 1  # the second b missed
    np.testing.assert_array_equal(matrix, expected)
    assert matrix[:3].sum() == 5  # every object counted once: found, confused or missed


def test_crowd_regions_count_nowhere():
    image = _image([[0, 0, 50, 50]], [0], [[5, 5, 15, 15]], [0.9], [0], crowd=[True])
    assert image.det_ignored.tolist() == [True]
    assert confusion_matrix([image], 1, 0.5).sum() == 0
