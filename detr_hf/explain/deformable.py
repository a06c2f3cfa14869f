"""Deformable DETR / ``dino_like``: each query's sampling points, weights, reference and refined boxes per layer."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..box_ops import cxcywh_to_xyxy
from ..inference.detector import image_size
from ..layers.deformable_transformer import valid_ratios
from . import Explanation, QueryExplanation, _class_scores, select_detections


def _decoder_inputs(model: torch.nn.Module, inputs: dict) -> tuple[Any, dict]:
    """Runs ``model`` with ``output_attentions`` and captures the decoder's ``spatial_shapes``, ``mask`` and
    ``memory``: what turns sampling locations (fractions of the padded feature maps) into image coordinates."""
    decoder = model.model.decoder
    signature = inspect.signature(decoder.forward)
    captured: dict = {}

    def capture(_module, args, kwargs):
        bound = signature.bind(*args, **kwargs)
        captured.update({k: bound.arguments.get(k) for k in ("memory", "spatial_shapes", "mask")})

    handle = decoder.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        outputs = model(**inputs, output_attentions=True, return_dict=True)
    finally:
        handle.remove()
    return outputs, captured


def _to_pixels_xyxy(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``(..., 4)`` normalized (cx, cy, w, h) or ``(..., 2)`` points (as zero-size boxes) -> xyxy image pixels."""
    if boxes.shape[-1] == 2:
        boxes = torch.cat([boxes, torch.zeros_like(boxes)], -1)
    return cxcywh_to_xyxy(boxes.float()) * boxes.new_tensor([width, height, width, height])


def sampling_points_in_pixels(locations: torch.Tensor, ratios: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Sampling locations ``(..., levels, points, 2)`` as (x, y) fractions of the padded feature maps -> pixels of the
    original image. ``ratios``: ``(levels, 2)`` each level's unpadded (width, height) share (``valid_ratios``): the
    decoder scales its normalized references by them, so dividing undoes the padding exactly."""
    scale = locations.new_tensor([width, height])
    return locations / ratios[:, None, :] * scale


def explain_deformable(
    model: torch.nn.Module, processor: Any, image: Any, top_k: int | None, threshold: float
) -> Explanation:
    """See :func:`detr_hf.explain.explain_detections`."""
    batch = processor(images=[image], return_tensors="pt")
    device = next(model.parameters()).device
    inputs = {key: batch[key].to(device) for key in ("pixel_values", "pixel_mask") if key in batch}
    outputs, decoder_inputs = _decoder_inputs(model, inputs)
    height, width = image_size(image)
    shapes = decoder_inputs["spatial_shapes"]
    ratios = valid_ratios(decoder_inputs["mask"], shapes, decoder_inputs["memory"])[0].float()  # (levels, 2)
    layer_scores = _class_scores(outputs.intermediate_logits[:, 0], model.config.use_focal_loss)  # (L, Q, C)
    layer_boxes = _to_pixels_xyxy(outputs.intermediate_pred_boxes[:, 0], width, height)  # (L, Q, 4)
    references = torch.stack([_to_pixels_xyxy(r[0], width, height) for r in outputs.intermediate_reference_points])
    points = torch.stack(
        [sampling_points_in_pixels(loc[0].float(), ratios, width, height) for loc in outputs.sampling_locations]
    )  # (L, Q, heads, levels, points, 2)
    weights = torch.stack([w[0].float() for w in outputs.cross_attentions])  # (L, Q, heads, levels, points)
    best_scores, best_labels = layer_scores.max(-1)  # (L, Q)
    queries = []
    for query, label, score in select_detections(layer_scores[-1], top_k, threshold, model.config.use_focal_loss):
        queries.append(
            QueryExplanation(
                query=query,
                label=label,
                score=score,
                box=layer_boxes[-1, query].cpu().numpy(),
                layer_boxes=layer_boxes[:, query].cpu().numpy(),
                layer_labels=best_labels[:, query].cpu().numpy(),
                layer_scores=best_scores[:, query].cpu().numpy(),
                reference_boxes=references[:, query].cpu().numpy(),
                sampling_points=points[:, query].cpu().numpy(),
                sampling_weights=weights[:, query].cpu().numpy(),
            )
        )
    padded_width = inputs["pixel_values"].shape[-1]
    valid_width = float(inputs["pixel_mask"][0, 0].sum()) if "pixel_mask" in inputs else padded_width
    strides = [padded_width / level_width * width / valid_width for _, level_width in shapes]
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return Explanation("deformable", image, queries, id2label, strides)
