"""Box conversions and overlaps: the one place in the package where box geometry lives.

Formats: ``cxcywh`` (centre, width, height: what the model predicts, normalized), ``xyxy`` (corners), ``xywh`` (COCO:
top-left corner, width, height). Each conversion takes a tensor or a numpy array of boxes (``(..., 4)``, same type
back), or one box as a sequence of 4 numbers (a tuple of 4 floats back, as the format readers use it).
(Conventions of annotation files, such as VOC's 1-based pixels, live in ``detr_hf.data.formats.coordinates``.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

Box = tuple[float, float, float, float]
Boxes = TypeVar("Boxes", Tensor, np.ndarray, Sequence[float])


def _convert(boxes: Tensor | np.ndarray | Sequence[float], fn: Callable) -> Tensor | np.ndarray | Box:
    """``fn`` applied to the four coordinates of every box (the last axis of a tensor or array, or one 4-sequence)."""
    if isinstance(boxes, Tensor):
        return torch.stack(fn(*boxes.unbind(-1)), dim=-1)
    if isinstance(boxes, np.ndarray):
        return np.stack(fn(*np.moveaxis(boxes, -1, 0)), axis=-1)
    a, b, c, d = (float(v) for v in boxes)
    return fn(a, b, c, d)


def cxcywh_to_xyxy(boxes: Boxes) -> Boxes:
    return _convert(boxes, lambda cx, cy, w, h: (cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h))


def xyxy_to_cxcywh(boxes: Boxes) -> Boxes:
    return _convert(boxes, lambda x0, y0, x1, y1: ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))


def xywh_to_xyxy(boxes: Boxes) -> Boxes:
    return _convert(boxes, lambda x, y, w, h: (x, y, x + w, y + h))


def xyxy_to_xywh(boxes: Boxes) -> Boxes:
    return _convert(boxes, lambda x0, y0, x1, y1: (x0, y0, x1 - x0, y1 - y0))


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``xyxy`` boxes."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of ``xyxy`` boxes, shape ``(N, M)``, and the union it divides by."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of ``xyxy`` boxes, shape ``(N, M)``.

    Degenerate boxes (x1 < x0 or y1 < y0) give infinities or NaNs downstream, so they are rejected here.
    """
    if not (boxes1[:, 2:] >= boxes1[:, :2]).all():
        raise ValueError(f"generalized_box_iou got boxes with x1 < x0 or y1 < y0 (first argument): {boxes1}")
    if not (boxes2[:, 2:] >= boxes2[:, :2]).all():
        raise ValueError(f"generalized_box_iou got boxes with x1 < x0 or y1 < y0 (second argument): {boxes2}")
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    enclosing = (bottom_right - top_left).clamp(min=0).prod(-1)
    return iou - (enclosing - union) / enclosing


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of ``boxes1[i]`` with ``boxes2[i]`` (``xyxy``), shape ``(N,)``: the loss needs only the diagonal."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    inter = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0).prod(-1)
    union = area1 + area2 - inter
    enclosing = (
        (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0).prod(-1)
    )
    return inter / union - (enclosing - union) / enclosing


def box_intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection areas of ``xyxy`` boxes, shape ``(N, M)``."""
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    return (bottom_right - top_left).clamp(min=0).prod(-1)
