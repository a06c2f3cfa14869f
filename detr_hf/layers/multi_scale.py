"""Multi-scale inputs for a deformable transformer: a projection per feature level (the backbone's last stages, then
stride-2 convolutions on the last one), flattened one level after the other, with sine positions plus a learned
embedding per level."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .position_encoding import sine_position_embedding
from .tracing import is_exporting


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)  # 32 groups as Deformable DETR when channels allow


def input_projections(backbone_channels: list[int], d_model: int, num_levels: int) -> nn.ModuleList:
    """A 1x1 convolution and GroupNorm per backbone level, then a stride-2 3x3 one per extra level."""
    projections = [nn.Sequential(nn.Conv2d(c, d_model, kernel_size=1), _group_norm(d_model)) for c in backbone_channels]
    for level in range(num_levels - len(backbone_channels)):
        in_channels = backbone_channels[-1] if level == 0 else d_model
        projections.append(
            nn.Sequential(nn.Conv2d(in_channels, d_model, kernel_size=3, stride=2, padding=1), _group_norm(d_model))
        )
    return nn.ModuleList(projections)


def flatten_levels(
    features: list[tuple[Tensor, Tensor]], pixel_mask: Tensor, projections: nn.ModuleList, level_embed: Tensor
) -> tuple[Tensor, Tensor, Tensor | None, list[tuple[int, int]]]:
    """The encoder's inputs from the backbone's `(feature map, mask)` pairs: memory and pos `(batch, tokens,
    d_model)`, the mask `(batch, tokens)` True on real tokens (None when nothing is padded) and each level's
    `(height, width)`."""
    maps = [projection(feature_map) for (feature_map, _), projection in zip(features, projections)]
    masks = [mask for _, mask in features]
    for projection in projections[len(maps) :]:
        maps.append(projection(features[-1][0] if len(maps) == len(features) else maps[-1]))
        masks.append(F.interpolate(pixel_mask[None].float(), size=maps[-1].shape[-2:]).to(torch.bool)[0])
    shapes = [tuple(m.shape[-2:]) for m in maps]
    memory = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
    d_model = memory.shape[-1]
    pos = torch.cat(
        [
            sine_position_embedding(mask, d_model // 2, offset=0.5) + level_embed[level]
            for level, mask in enumerate(masks)
        ],
        1,
    ).to(memory.dtype)
    mask = torch.cat([m.flatten(1) for m in masks], 1)
    exporting = is_exporting()  # an exported graph keeps the mask
    return memory, pos, None if not exporting and bool(mask.all()) else mask, shapes


__all__ = ["flatten_levels", "input_projections"]
