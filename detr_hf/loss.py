"""Hungarian matching and the set-prediction loss of DETR (softmax + "no object", or sigmoid focal)."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .box_ops import cxcywh_to_xyxy, generalized_box_iou, paired_generalized_box_iou
from .configuration_detr import DetrConfig

Targets = list[dict[str, Tensor]]
Matching = list[tuple[Tensor, Tensor]]
# "loss_ce_3": decoder layer 3's auxiliary term; "_enc": two-stage proposals; "_dn": denoising queries
_TERM_SUFFIX = re.compile(r"(_enc|_dn)?(_\d+)?$")


def focal_class_cost(logits: Tensor, alpha: float, gamma: float) -> Tensor:
    """Per-class matching cost of sigmoid focal loss (Deformable DETR): cost of calling each query each class."""
    prob = logits.sigmoid()
    positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    negative = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    return positive - negative


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Elementwise focal loss (Lin et al. 2017) of `logits` against 0/1 `targets` of the same shape."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


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


def _matched_index(matching: Matching) -> tuple[Tensor, Tensor]:
    batch = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matching)])
    return batch, torch.cat([rows for rows, _ in matching])


class SetCriterion(nn.Module):
    """DETR's loss: match, then classification + L1 + GIoU on matched pairs, for the last and every auxiliary layer.

    `loss_dict` uses transformers' names (`loss_ce`, `loss_bbox`, `loss_giou`, `cardinality_error`, suffixed `_i` for
    decoder layer i's auxiliary head). Everything runs in fp32, whatever the autocast context.
    """

    def __init__(self, config: DetrConfig):
        super().__init__()
        self.config = config
        self.num_classes = config.num_labels
        self.matcher = HungarianMatcher(
            config.class_cost,
            config.bbox_cost,
            config.giou_cost,
            config.use_focal_loss,
            config.focal_alpha,
            config.focal_gamma,
        )
        self.weights = {
            "loss_ce": config.class_loss_coefficient,
            "loss_bbox": config.bbox_loss_coefficient,
            "loss_giou": config.giou_loss_coefficient,
        }

    def forward(
        self, logits: Tensor, pred_boxes: Tensor, targets: Targets, auxiliary_outputs: list[dict] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            num_boxes = self._num_boxes(targets, logits.device)
            loss_dict = self.single_layer_losses(logits.float(), pred_boxes.float(), targets, num_boxes)
            for i, aux in enumerate(auxiliary_outputs or []):
                layer = self.single_layer_losses(aux["logits"].float(), aux["pred_boxes"].float(), targets, num_boxes)
                loss_dict.update({f"{k}_{i}": v for k, v in layer.items()})
        return self.weighted_sum(loss_dict), loss_dict

    def extra_losses(
        self,
        layers: list[tuple[Tensor, Tensor]],
        targets: Targets,
        suffix: str,
        matching: Matching | None = None,
        groups: int = 1,
    ) -> dict[str, Tensor]:
        """Terms for predictions beside the decoder's matching queries (two-stage proposals `"_enc"`, denoising
        queries `"_dn"`), named `loss_ce{suffix}` for the last of `layers` (logits, boxes) and
        `loss_ce{suffix}_{i}` for the others. `groups`: copies of every target (the normalization grows with it)."""
        device = layers[-1][0].device
        loss_dict = {}
        with torch.autocast(device_type=device.type, enabled=False):
            num_boxes = self._num_boxes(targets, device) * groups
            for i, (logits, boxes) in enumerate(layers):
                terms = self.single_layer_losses(logits.float(), boxes.float(), targets, num_boxes, matching)
                name = suffix if i == len(layers) - 1 else f"{suffix}_{i}"
                loss_dict.update({f"{k}{name}": v for k, v in terms.items()})
        return loss_dict

    def weighted_sum(self, loss_dict: dict[str, Tensor]) -> Tensor:
        """The training loss: every term of `loss_dict` (any layer, proposals, denoising) times its weight."""
        terms = ((_TERM_SUFFIX.sub("", key), value) for key, value in loss_dict.items())
        return sum(self.weights[name] * value for name, value in terms if name in self.weights)

    def single_layer_losses(
        self, logits: Tensor, pred_boxes: Tensor, targets: Targets, num_boxes: Tensor, matching: Matching | None = None
    ) -> dict[str, Tensor]:
        """One layer's terms; `matching` given (denoising queries) replaces the Hungarian matching."""
        if matching is None:
            matching = self.matcher(logits, pred_boxes, targets)
        index = _matched_index(matching)
        matched_labels = torch.cat([t["class_labels"][cols] for t, (_, cols) in zip(targets, matching)])
        losses = {"loss_ce": self._class_loss(logits, index, matched_labels, num_boxes)}
        if not self.config.use_focal_loss:
            losses["cardinality_error"] = self._cardinality_error(logits, targets)
        source_boxes = pred_boxes[index]
        target_boxes = torch.cat([t["boxes"][cols] for t, (_, cols) in zip(targets, matching)]).float()
        losses["loss_bbox"] = F.l1_loss(source_boxes, target_boxes, reduction="sum") / num_boxes
        giou = paired_generalized_box_iou(cxcywh_to_xyxy(source_boxes), cxcywh_to_xyxy(target_boxes))
        losses["loss_giou"] = (1 - giou).sum() / num_boxes
        return losses

    def _class_loss(self, logits: Tensor, index: tuple[Tensor, Tensor], labels: Tensor, num_boxes: Tensor) -> Tensor:
        if self.config.use_focal_loss:
            onehot = torch.zeros_like(logits)
            onehot[index[0], index[1], labels] = 1.0
            loss = sigmoid_focal_loss(logits, onehot, self.config.focal_alpha, self.config.focal_gamma)
            return loss.sum() / num_boxes
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[index] = labels
        class_weight = torch.ones(self.num_classes + 1, device=logits.device)
        class_weight[-1] = self.config.eos_coefficient
        return F.cross_entropy(logits.transpose(1, 2), target_classes, class_weight)

    @torch.no_grad()
    def _cardinality_error(self, logits: Tensor, targets: Targets) -> Tensor:
        """Absolute error in the number of predicted objects: for logging, not optimized."""
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
        expected = torch.as_tensor([len(t["class_labels"]) for t in targets], device=logits.device, dtype=torch.float)
        return F.l1_loss(predicted, expected)

    @staticmethod
    def _num_boxes(targets: Targets, device: torch.device) -> Tensor:
        """Number of target boxes averaged over processes (DETR normalizes each loss by it), at least 1."""
        num_boxes = torch.as_tensor(float(sum(len(t["class_labels"]) for t in targets)), device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_boxes)
            num_boxes = num_boxes / torch.distributed.get_world_size()
        return num_boxes.clamp(min=1)
