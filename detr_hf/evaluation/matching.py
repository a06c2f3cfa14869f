"""Detections matched to ground truth at one IoU threshold, image by image: the basis of the operating-point report.

COCOeval matches at ten IoU thresholds and only keeps its verdicts internally; the report needs one verdict per
detection at IoU 0.5 (is it correct, which object did it find, which object did it miss). The matcher here is COCO's
greedy rule at a single threshold: per image, detections in decreasing score order each take the unmatched
ground-truth box with the highest IoU (at least ``iou_threshold``); a detection that only overlaps a crowd region
(``iscrowd=1``, overlap measured as the share of the detection inside it) is ignored, neither right nor wrong.
Because the order is by score, removing the detections under a threshold never changes the matches of those above
it, so counts at any threshold can be read off one matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..box_ops import box_area, box_iou, xywh_to_xyxy
from .coco_evaluator import CocoEvaluator


@dataclass
class ImageMatches:
    """One image's ground truth and detections, matched at one IoU threshold.

    Boxes are ``xyxy`` in the image's pixels; labels are the model's 0-based labels. ``det_gt[i]`` is the index of the
    ground-truth box detection ``i`` matched (same class), -1 when none; ``det_ignored[i]`` marks a detection that only
    found a crowd region. Detections are sorted by decreasing score.
    """

    image_id: int
    file_name: str | None
    gt_boxes: np.ndarray  # (G, 4)
    gt_labels: np.ndarray  # (G,)
    gt_crowd: np.ndarray  # (G,) bool
    det_boxes: np.ndarray  # (D, 4)
    det_scores: np.ndarray  # (D,)
    det_labels: np.ndarray  # (D,)
    det_gt: np.ndarray  # (D,) int, -1 = no match
    det_ignored: np.ndarray  # (D,) bool

    @property
    def det_correct(self) -> np.ndarray:
        """(D,) bool: the detection matched a ground-truth box of its class."""
        return self.det_gt >= 0

    def gt_found(self) -> np.ndarray:
        """(G,) bool: some detection matched this ground-truth box."""
        found = np.zeros(len(self.gt_boxes), dtype=bool)
        found[self.det_gt[self.det_gt >= 0]] = True
        return found


def overlaps(det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """(D, G) overlap as COCO measures it: IoU with ordinary boxes, intersection over the detection's area with crowd
    regions."""
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return np.zeros((len(det_boxes), len(gt_boxes)))
    dets, gts = torch.as_tensor(det_boxes, dtype=torch.float64), torch.as_tensor(gt_boxes, dtype=torch.float64)
    iou, union = box_iou(dets, gts)
    inside = (iou * union) / box_area(dets).clamp(min=1e-12)[:, None]
    return torch.where(torch.as_tensor(gt_crowd, dtype=torch.bool)[None, :], inside, iou).nan_to_num(0.0).numpy()


def greedy_match(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    gt_crowd: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_labels: np.ndarray,
    iou_threshold: float = 0.5,
    class_aware: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching at one IoU threshold, for one image.

    Returns ``det_gt`` (D,) (matched ground-truth index or -1) and ``det_ignored`` (D,) bool (found only a crowd
    region). ``class_aware=False`` lets a detection match a box of any class (the confusion matrix).
    """
    num_det = len(det_scores)
    det_gt = np.full(num_det, -1, dtype=np.int64)
    ignored = np.zeros(num_det, dtype=bool)
    if num_det == 0 or len(gt_boxes) == 0:
        return det_gt, ignored
    iou = overlaps(det_boxes, gt_boxes, gt_crowd)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d in np.argsort(-det_scores, kind="stable"):
        allowed = (gt_labels == det_labels[d]) if class_aware else np.ones(len(gt_boxes), dtype=bool)
        candidates = allowed & ~gt_crowd & ~taken & (iou[d] >= iou_threshold)
        if candidates.any():
            best = int(np.argmax(np.where(candidates, iou[d], -1.0)))
            det_gt[d], taken[best] = best, True
        elif (allowed & gt_crowd & (iou[d] >= iou_threshold)).any():
            ignored[d] = True
    return det_gt, ignored


def match_images(evaluator: CocoEvaluator, iou_threshold: float = 0.5) -> list[ImageMatches]:
    """Every ground-truth image of a filled :class:`CocoEvaluator` (in ground-truth order) with its stored detections,
    matched class-aware at ``iou_threshold``. Images that got no ``update()`` have no detections."""
    to_label = {category_id: label for label, category_id in evaluator.label_to_category_id.items()}
    by_image: dict[int, list[dict]] = {}
    for annotation in evaluator.ground_truth["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    results = []
    for image in evaluator.ground_truth["images"]:
        annotations = by_image.get(image["id"], [])
        gt_boxes = xywh_to_xyxy(np.asarray([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4))
        gt_labels = np.asarray([to_label[a["category_id"]] for a in annotations], dtype=np.int64)
        gt_crowd = np.asarray([bool(a["iscrowd"]) for a in annotations], dtype=bool)
        boxes, scores, category_ids = evaluator._predictions.get(image["id"], empty)
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        det_boxes = xywh_to_xyxy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))[order]
        det_scores = np.asarray(scores, dtype=np.float64)[order]
        det_labels = np.asarray([to_label[int(c)] for c in np.asarray(category_ids)[order]], dtype=np.int64)
        det_gt, ignored = greedy_match(gt_boxes, gt_labels, gt_crowd, det_boxes, det_scores, det_labels, iou_threshold)
        results.append(
            ImageMatches(
                int(image["id"]),
                image.get("file_name"),
                gt_boxes,
                gt_labels,
                gt_crowd,
                det_boxes,
                det_scores,
                det_labels,
                det_gt,
                ignored,
            )
        )
    return results


def split_images(images: Sequence[ImageMatches], fraction: float = 0.5) -> tuple[list[int], list[int]]:
    """Indices of a deterministic split of the images (by a hash of ``image_id``): ``fraction`` to fit, the rest held
    out. Both parts get at least one image when there are two or more."""
    keys = np.array([(image.image_id * 2654435761) % 2**32 for image in images], dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    cut = round(len(images) * fraction)
    cut = min(max(cut, 1), len(images) - 1) if len(images) >= 2 else len(images)
    return sorted(order[:cut].tolist()), sorted(order[cut:].tolist())
