"""Boxes in and out of a DETR-family model: COCO-detection targets to DETR labels (what the image processor encodes),
and raw predictions to detections (what it post-processes). Pure tensor functions, usable without a processor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.image_processing_utils import BatchFeature

from .box_ops import cxcywh_to_xyxy, xywh_to_xyxy, xyxy_to_cxcywh

__all__ = ["detections", "encode_target"]


def encode_target(
    target: Mapping[str, Any],
    index: int,
    orig_hw: tuple[int, int],
    new_hw: tuple[int, int],
    do_convert_annotations: bool,
) -> BatchFeature:
    """One COCO-detection target -> DETR labels (tensors), in the resized image's frame."""
    where = f"annotations[{index}]"
    if not isinstance(target, Mapping) or "annotations" not in target or "image_id" not in target:
        keys = sorted(target) if isinstance(target, Mapping) else type(target).__name__
        raise ValueError(
            f"{where} must be a dict with 'image_id' and 'annotations' (a list of COCO objects), got {keys}"
        )
    objects = []
    for j, obj in enumerate(target["annotations"]):
        if not isinstance(obj, Mapping) or "bbox" not in obj or "category_id" not in obj:
            raise ValueError(f"{where}['annotations'][{j}] needs 'bbox' and 'category_id', got {obj!r}")
        if len(obj["bbox"]) != 4:
            raise ValueError(f"{where}['annotations'][{j}]['bbox'] must be [x, y, w, h], got {obj['bbox']!r}")
        if not obj.get("iscrowd", 0):
            objects.append(obj)

    height, width = orig_hw
    new_h, new_w = new_hw
    boxes = torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32).reshape(-1, 4)
    classes = torch.tensor([int(obj["category_id"]) for obj in objects], dtype=torch.int64)
    area = torch.tensor(
        [obj["area"] if "area" in obj else obj["bbox"][2] * obj["bbox"][3] for obj in objects], dtype=torch.float32
    )
    corners = xywh_to_xyxy(boxes)
    corners[:, 0::2] = corners[:, 0::2].clamp(min=0, max=width)
    corners[:, 1::2] = corners[:, 1::2].clamp(min=0, max=height)
    keep = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
    corners, classes, area = corners[keep], classes[keep], area[keep]

    scale_w, scale_h = new_w / width, new_h / height
    if do_convert_annotations:
        # Normalized to the unpadded image, so the same numbers hold before and after resizing.
        boxes = xyxy_to_cxcywh(corners) / torch.tensor([width, height, width, height], dtype=torch.float32)
    else:
        boxes = corners * torch.tensor([scale_w, scale_h, scale_w, scale_h], dtype=torch.float32)
    return BatchFeature(
        data={
            "image_id": torch.tensor([int(target["image_id"])], dtype=torch.int64),
            "class_labels": classes,
            "boxes": boxes,
            "area": area * (scale_w * scale_h),
            "iscrowd": torch.zeros_like(classes),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "size": torch.tensor([new_h, new_w], dtype=torch.int64),
        }
    )


def detections(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    use_focal_loss: bool,
    threshold: float | torch.Tensor = 0.5,
    target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
    top_k: int | None = 100,
    temperature: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Raw predictions -> per-image ``{"scores", "labels", "boxes"}``, best score first (see
    :meth:`~detr_hf.image_processing_detr.DetrHfImageProcessor.post_process_object_detection`).

    ``threshold``: a float, or a tensor ``(K,)`` of one threshold per label. ``temperature``: scores become
    ``sigmoid(logit(score) / temperature)`` (for sigmoid heads, the logits divided by it; ranking unchanged)."""
    batch, num_queries, num_logits = logits.shape
    if target_sizes is not None and len(target_sizes) != batch:
        raise ValueError(f"target_sizes has {len(target_sizes)} entries for a batch of {batch} predictions")
    logits = logits.float()
    if use_focal_loss:
        prob = logits.sigmoid().flatten(1)  # (B, Q * K), index = query * K + class
        k = prob.shape[1] if top_k is None else min(top_k, prob.shape[1])
        scores, flat_index = prob.topk(k, dim=1)
        labels, query = flat_index % num_logits, flat_index // num_logits
    else:
        best, best_label = logits.softmax(-1)[..., :-1].max(-1)
        k = num_queries if top_k is None else min(top_k, num_queries)
        scores, query = best.topk(k, dim=1)
        labels = best_label.gather(1, query)
    if temperature is not None and float(temperature) != 1.0:
        scores = (scores.clamp(1e-6, 1 - 1e-6).logit() / float(temperature)).sigmoid()
    boxes = cxcywh_to_xyxy(pred_boxes.float()).gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
    if target_sizes is not None:
        sizes = torch.as_tensor(
            [list(map(float, s)) for s in target_sizes] if not torch.is_tensor(target_sizes) else target_sizes,
            dtype=torch.float32,
            device=boxes.device,
        )
        boxes = boxes * sizes[:, [1, 0, 1, 0]].unsqueeze(1)
    results = []
    for image_scores, image_labels, image_boxes in zip(scores, labels, boxes):
        limit = threshold.to(image_scores.device)[image_labels] if torch.is_tensor(threshold) else threshold
        keep = image_scores > limit
        results.append({"scores": image_scores[keep], "labels": image_labels[keep], "boxes": image_boxes[keep]})
    return results


def label_thresholds(threshold: str, saved: Mapping[str, float] | None, num_logits: int) -> torch.Tensor:
    """The ``(num_logits,)`` per-label thresholds ``threshold="auto"`` stands for: the ``saved`` ones (label id as a
    string -> threshold), 0.5 for a label without one."""
    if threshold != "auto":
        raise ValueError(f"threshold must be a number or 'auto', got {threshold!r}")
    if not saved:
        raise ValueError(
            "threshold='auto' needs per-class thresholds, and this processor has none: write them with "
            "`detr-hf evaluate --report DIR --save-operating-point` (see docs/reports.md), or pass a number"
        )
    limits = torch.full((num_logits,), 0.5)
    for label, value in saved.items():
        if 0 <= int(label) < num_logits:
            limits[int(label)] = float(value)
    return limits
