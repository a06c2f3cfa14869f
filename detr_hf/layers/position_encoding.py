"""Sine position encodings: DETR's 2-D encoding of feature-map cells, and DAB-DETR's encoding of boxes."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _frequencies(num_features: int, temperature: float, device: torch.device) -> Tensor:
    exponent = 2 * torch.div(torch.arange(num_features, device=device), 2, rounding_mode="floor")
    return temperature ** (exponent / num_features)


def sine_position_embedding(
    mask: Tensor, num_features: int, temperature: float = 10000.0, offset: float = 0.0
) -> Tensor:
    """DETR's 2-D sine encoding `(batch, height * width, 2 * num_features)` of a `(batch, height, width)` bool mask
    of real cells, normalized to [0, 2*pi] over each image's unpadded extent: (y features, then x features).

    `offset=0.5` measures positions at cell centres instead of their far edges, as Deformable DETR does."""
    not_padded = mask.float()
    y = not_padded.cumsum(1)
    x = not_padded.cumsum(2)
    y = (y - offset) / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
    x = (x - offset) / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
    frequencies = _frequencies(num_features, temperature, mask.device)
    pos_x, pos_y = x[..., None] / frequencies, y[..., None] / frequencies
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)


def box_position_embedding(boxes: Tensor, num_features: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding `(..., 4 * num_features)` of boxes (cx, cy, w, h) in [0, 1], each coordinate in turn."""
    frequencies = _frequencies(num_features, temperature, boxes.device)
    angles = boxes.float()[..., None] * (2 * math.pi) / frequencies
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), -1).flatten(-3).to(boxes.dtype)


__all__ = ["box_position_embedding", "sine_position_embedding"]
