"""DETR's set-prediction loss: match, then classification (softmax + "no object", or sigmoid focal), L1 and GIoU on
the matched pairs, for the last decoder layer, every auxiliary layer and any extra group of predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig

from ..box_ops import cxcywh_to_xyxy, paired_generalized_box_iou
from .matcher import HungarianMatcher, Matching, Targets


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Elementwise focal loss (Lin et al. 2017) of `logits` against 0/1 `targets` of the same shape."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def loss_weight_dict(config: PretrainedConfig, groups: tuple[str, ...] = ()) -> dict[str, float]:
    """The weight of every key the criterion can emit: each term (`loss_ce`, `loss_bbox`, `loss_giou`, and the
    logged-only `cardinality_error` at 0) for the last decoder layer, for each auxiliary layer (`_0` to
    `_{decoder_layers - 2}`), and the same again for each group of extra predictions (`_enc`, `_dn`, `_dn_0`, ...)."""
    base = {
        "loss_ce": config.class_loss_coefficient,
        "loss_bbox": config.bbox_loss_coefficient,
        "loss_giou": config.giou_loss_coefficient,
        "cardinality_error": 0.0,
    }
    layers = ["", *(f"_{i}" for i in range(config.decoder_layers - 1))]
    suffixes = [*layers, *(group + layer for group in groups for layer in layers)]
    return {term + suffix: weight for term, weight in base.items() for suffix in suffixes}


def _matched_index(matching: Matching) -> tuple[Tensor, Tensor]:
    batch = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matching)])
    return batch, torch.cat([rows for rows, _ in matching])


class SetCriterion(nn.Module):
    """DETR's loss: match, then classification + L1 + GIoU on matched pairs, for the last and every auxiliary layer.

    `loss_dict` uses transformers' names (`loss_ce`, `loss_bbox`, `loss_giou`, `cardinality_error`, suffixed `_i` for
    decoder layer i's auxiliary head); `weight_dict` gives each of them its weight, and a key without one is an error.
    `groups`: suffixes of the extra predictions the model scores with `extra_losses` (e.g. `("_enc", "_dn")`).
    Everything runs in fp32, whatever the autocast context.
    """

    def __init__(self, config: PretrainedConfig, groups: tuple[str, ...] = ()):
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
        self.weight_dict = loss_weight_dict(config, groups)

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
        """The training loss: every term of `loss_dict` times its weight in `weight_dict`."""
        unknown = [key for key in loss_dict if key not in self.weight_dict]
        if unknown:
            raise ValueError(f"Loss terms without a weight: {unknown}; add them to the criterion's weight_dict.")
        return sum(self.weight_dict[key] * value for key, value in loss_dict.items())

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


__all__ = ["SetCriterion", "loss_weight_dict", "sigmoid_focal_loss"]
