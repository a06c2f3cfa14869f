"""Multi-scale deformable attention (Zhu et al. 2021) in pure PyTorch: `grid_sample`, no compiled extension, so it
runs on CPU, MPS and any GPU. Each query looks at a few learned points around its reference point on every feature
level, so the cost grows linearly with the number of feature tokens instead of quadratically."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init


def multi_scale_deformable_attention(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Bilinearly samples every level at the given locations and sums the samples with the attention weights.

    Args:
        value: `(batch, tokens, heads, head_dim)`, the flattened levels one after the other.
        spatial_shapes: `(height, width)` of each level.
        sampling_locations: `(batch, queries, heads, levels, points, 2)` as (x, y) in [0, 1].
        attention_weights: `(batch, queries, heads, levels, points)`, summing to 1 over levels and points.

    Returns:
        `(batch, queries, heads * head_dim)`.
    """
    heads = value.shape[2]
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1]
    weights = attention_weights.transpose(1, 2).flatten(0, 1)  # (batch * heads, queries, levels, points)
    out = 0
    # Level by level: stacking every level's samples first costs a copy and, past 32 MB, fresh pages on each call.
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = per_level[level].permute(0, 2, 3, 1).flatten(0, 1).unflatten(-1, (height, width))
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (batch * heads, queries, points, 2)
        samples = F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out + (samples * weights[:, None, :, level]).sum(-1)  # (batch * heads, head_dim, queries)
    # unflatten/flatten rather than view(batch, ...): a traced ONNX graph then keeps the batch dynamic
    return out.unflatten(0, (-1, heads)).flatten(1, 2).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over `num_levels` feature maps with `num_points` sampling points per head and level."""

    def __init__(self, d_model: int, num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def reset_offsets(self) -> None:
        """Deformable DETR's init: each head starts looking in its own direction, points spread outwards (through
        transformers' init functions, which leave weights loaded from a checkpoint alone)."""
        init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        grid = directions[:, None, None, :].repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, None, :, None]
        init.copy_(self.sampling_offsets.bias, grid.flatten())
        init.zeros_(self.attention_weights.weight)
        init.zeros_(self.attention_weights.bias)

    def sampling(
        self, query: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Where each query looks and how much: sampling locations `(batch, queries, heads, levels, points, 2)` as
        (x, y) fractions of the (padded) feature maps, and attention weights `(batch, queries, heads, levels,
        points)` summing to 1 per head. `reference_points`: `(batch, queries, levels, 2)` points or `(..., 4)` boxes
        (cx, cy, w, h) in [0, 1]."""
        batch, queries, _ = query.shape
        offsets = self.sampling_offsets(query).view(batch, queries, self.num_heads, self.num_levels, self.num_points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.num_heads, -1).softmax(-1)
        weights = weights.view(batch, queries, self.num_heads, self.num_levels, self.num_points)
        if reference_points.shape[-1] == 2:
            normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        else:
            centres, sizes = reference_points[:, :, None, :, None, :2], reference_points[:, :, None, :, None, 2:]
            locations = centres + offsets / self.num_points * sizes * 0.5
        return locations, weights

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int]],
        value_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """`value`: `(batch, tokens, d_model)`, the flattened levels; `value_mask`: `(batch, tokens)` True on real
        (unpadded) tokens. With `need_weights`, also returns `sampling`'s (locations, weights)."""
        value = self.value_proj(value)
        if value_mask is not None:
            value = value.masked_fill(~value_mask[..., None], 0.0)
        value = value.unflatten(-1, (self.num_heads, -1))
        locations, weights = self.sampling(query, reference_points, spatial_shapes)
        out = self.output_proj(multi_scale_deformable_attention(value, spatial_shapes, locations, weights))
        return (out, (locations, weights)) if need_weights else out


__all__ = ["MultiScaleDeformableAttention", "multi_scale_deformable_attention"]
