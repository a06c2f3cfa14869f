"""Vanilla DETR: each query's decoder cross-attention map per layer, with the box and class each layer predicts."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..box_ops import cxcywh_to_xyxy
from ..inference.detector import image_size
from . import Explanation, QueryExplanation, _class_scores, select_detections


def attention_on_image(attention: torch.Tensor, valid: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``(..., h, w)`` attention over the feature map -> ``(..., height, width)`` over the image, each map scaled to
    its own maximum. ``valid``: ``(h, w)`` True on unpadded cells; the unpadded part covers the whole image."""
    rows, cols = int(valid.any(1).sum()), int(valid.any(0).sum())
    cropped = attention[..., :rows, :cols].float()
    flat = cropped.reshape(-1, 1, rows, cols)
    upsampled = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    upsampled = upsampled.reshape(*cropped.shape[:-2], height, width)
    peak = upsampled.flatten(-2).amax(-1).clamp_min(1e-12)[..., None, None]
    return upsampled / peak


def explain_detr(
    model: torch.nn.Module, processor: Any, image: Any, top_k: int | None, threshold: float
) -> Explanation:
    """See :func:`detr_hf.explain.explain_detections`."""
    batch = processor(images=[image], return_tensors="pt")
    device = next(model.parameters()).device
    inputs = {key: batch[key].to(device) for key in ("pixel_values", "pixel_mask") if key in batch}
    outputs = model.model(inputs["pixel_values"], inputs.get("pixel_mask"), output_attentions=True)
    hidden = outputs.intermediate_hidden_states[:, 0].float()  # (layers, queries, d_model)
    layer_scores = _class_scores(model.class_labels_classifier(hidden), False)  # (layers, queries, classes)
    height, width = image_size(image)
    scale = hidden.new_tensor([width, height, width, height])
    layer_boxes = cxcywh_to_xyxy(model.bbox_predictor(hidden).sigmoid()) * scale  # (layers, queries, 4)
    attention = torch.stack(outputs.cross_attentions)[:, 0].mean(1)  # (layers, queries, h, w): mean over heads
    best_scores, best_labels = layer_scores.max(-1)
    queries = []
    for query, label, score in select_detections(layer_scores[-1], top_k, threshold, False):
        queries.append(
            QueryExplanation(
                query=query,
                label=label,
                score=score,
                box=layer_boxes[-1, query].cpu().numpy(),
                layer_boxes=layer_boxes[:, query].cpu().numpy(),
                layer_labels=best_labels[:, query].cpu().numpy(),
                layer_scores=best_scores[:, query].cpu().numpy(),
                attention_maps=attention_on_image(attention[:, query], outputs.feature_mask[0], width, height)
                .cpu()
                .numpy(),
            )
        )
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return Explanation("detr", image, queries, id2label)
