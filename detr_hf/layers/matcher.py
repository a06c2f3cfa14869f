"""Hungarian matching of predictions to targets (DETR; with the focal class cost of Deformable DETR)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..box_ops import cxcywh_to_xyxy, generalized_box_iou

Targets = list[dict[str, Tensor]]
Matching = list[tuple[Tensor, Tensor]]


def focal_class_cost(logits: Tensor, alpha: float, gamma: float) -> Tensor:
    """Per-class matching cost of sigmoid focal loss (Deformable DETR): cost of calling each query each class."""
    prob = logits.sigmoid()
    positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    negative = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    return positive - negative


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of predictions to targets, one `linear_sum_assignment` per image.

    The cost is `class_cost * C_class + bbox_cost * L1(cxcywh) + giou_cost * -GIoU`, computed for the whole batch at
    once; with focal loss the class term is the focal cost, else minus the softmax probability of the target class.
    """

    def __init__(
        self,
        class_cost: float = 1.0,
        bbox_cost: float = 5.0,
        giou_cost: float = 2.0,
        use_focal_loss: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if class_cost == bbox_cost == giou_cost == 0:
            raise ValueError("HungarianMatcher: all matching costs are 0.")
        self.class_cost, self.bbox_cost, self.giou_cost = class_cost, bbox_cost, giou_cost
        self.use_focal_loss, self.focal_alpha, self.focal_gamma = use_focal_loss, focal_alpha, focal_gamma

    @torch.no_grad()
    def forward(self, logits: Tensor, pred_boxes: Tensor, targets: Targets) -> Matching:
        """Returns, per image, (query indices, target indices) of the matched pairs."""
        batch_size, num_queries = logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]
        logits, out_boxes = logits.flatten(0, 1).float(), pred_boxes.flatten(0, 1).float()
        target_ids = torch.cat([t["class_labels"] for t in targets])
        target_boxes = torch.cat([t["boxes"] for t in targets]).float()
        if self.use_focal_loss:
            class_cost = focal_class_cost(logits, self.focal_alpha, self.focal_gamma)[:, target_ids]
        else:
            class_cost = -logits.softmax(-1)[:, target_ids]
        bbox_cost = torch.cdist(out_boxes, target_boxes, p=1)
        giou_cost = -generalized_box_iou(cxcywh_to_xyxy(out_boxes), cxcywh_to_xyxy(target_boxes))
        cost = self.class_cost * class_cost + self.bbox_cost * bbox_cost + self.giou_cost * giou_cost
        cost = cost.view(batch_size, num_queries, -1).cpu()
        if not torch.isfinite(cost).all():
            raise ValueError(self._explain_non_finite(logits, out_boxes, targets))
        matching = []
        for i, image_cost in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(image_cost[i])
            matching.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matching

    @staticmethod
    def _explain_non_finite(logits: Tensor, boxes: Tensor, targets: Targets) -> str:
        if not torch.isfinite(logits).all():
            return "Matching cost is not finite: the model's class logits contain NaN/inf (training diverged?)."
        if not torch.isfinite(boxes).all():
            return "Matching cost is not finite: the model's predicted boxes contain NaN/inf (training diverged?)."
        for i, target in enumerate(targets):
            if not torch.isfinite(target["boxes"]).all():
                return f"Matching cost is not finite: the target boxes of image {i} in the batch contain NaN/inf."
            if (target["boxes"][:, 2:] <= 0).any():
                return f"Matching cost is not finite: image {i} in the batch has a target box of zero width or height."
        return "Matching cost is not finite (NaN/inf) for an unknown reason."


__all__ = ["HungarianMatcher", "Matching", "Targets", "focal_class_cost"]
