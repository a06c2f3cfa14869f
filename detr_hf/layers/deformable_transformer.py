"""Deformable DETR's transformer (Zhu et al. 2021): an encoder whose self-attention is multi-scale deformable
attention over the flattened feature levels, and a decoder whose queries carry reference points (then boxes) that each
layer can refine, looking at the encoder's levels through deformable cross-attention.

Both follow the contracts of `registry.ENCODERS` / `registry.DECODERS`."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig

from .attention import DetrAttention
from .deformable_attention import MultiScaleDeformableAttention
from .heads import DetrMLPPredictionHead, refine_boxes
from .position_encoding import box_position_embedding
from .transformer import DetrMLP


def valid_ratios(mask: Tensor | None, spatial_shapes: list[tuple[int, int]], memory: Tensor) -> Tensor:
    """Per image and level, the (width, height) share of the feature map that is not padding: `(batch, levels, 2)`.
    `mask`: `(batch, tokens)` True on real tokens, None when nothing is padded."""
    if mask is None:
        return torch.ones(memory.shape[0], len(spatial_shapes), 2, device=memory.device)
    ratios, start = [], 0
    for height, width in spatial_shapes:
        level = mask[:, start : start + height * width].view(-1, height, width)
        ratios.append(torch.stack([level[:, 0, :].sum(1) / width, level[:, :, 0].sum(1) / height], -1))
        start += height * width
    return torch.stack(ratios, 1).float()


def _encoder_reference_points(shapes: list[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Each feature cell's centre, normalized to its image's unpadded extent: `(batch, tokens, levels, 2)`."""
    points = []
    for level, (height, width) in enumerate(shapes):
        # arange + 0.5 is linspace(0.5, size - 0.5, size) exactly, and exports to ONNX in fp32 (linspace: in fp64)
        y, x = torch.meshgrid(
            torch.arange(height, dtype=ratios.dtype, device=ratios.device) + 0.5,
            torch.arange(width, dtype=ratios.dtype, device=ratios.device) + 0.5,
            indexing="ij",
        )
        y = y.reshape(-1)[None] / (ratios[:, None, level, 1] * height)
        x = x.reshape(-1)[None] / (ratios[:, None, level, 0] * width)
        points.append(torch.stack((x, y), -1))
    return torch.cat(points, 1)[:, :, None] * ratios[:, None]


class DeformableDetrEncoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = MultiScaleDeformableAttention(
            d, config.encoder_attention_heads, config.num_feature_levels, config.encoder_n_points
        )
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.mlp = DetrMLP(config, config.encoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = config.dropout

    def forward(self, x: Tensor, pos: Tensor, reference_points: Tensor, shapes: list, mask: Tensor | None) -> Tensor:
        attended = self.self_attn(x + pos, reference_points, x, shapes, mask)
        x = self.self_attn_layer_norm(x + F.dropout(attended, self.dropout, self.training))
        return self.final_layer_norm(x + self.mlp(x))


class DeformableDetrEncoder(nn.Module):
    """`config.encoder_layers` layers of deformable self-attention: each token samples around its own cell."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.layers = nn.ModuleList(DeformableDetrEncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(
        self, memory: Tensor, pos: Tensor, spatial_shapes: list[tuple[int, int]], mask: Tensor | None
    ) -> Tensor:
        """The encoder contract. `memory`, `pos`: `(batch, tokens, d_model)`, the levels flattened one after the
        other; `spatial_shapes`: `(height, width)` per level; `mask`: `(batch, tokens)` True on real tokens, None when
        nothing is padded. Returns the new memory, same shape."""
        reference = _encoder_reference_points(spatial_shapes, valid_ratios(mask, spatial_shapes, memory))
        for layer in self.layers:
            memory = layer(memory, pos, reference, spatial_shapes, mask)
        return memory


class DeformableDetrDecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = DetrAttention(d, config.decoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = MultiScaleDeformableAttention(
            d, config.decoder_attention_heads, config.num_feature_levels, config.decoder_n_points
        )
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.mlp = DetrMLP(config, config.decoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = config.dropout

    def forward(
        self,
        x: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        shapes: list,
        mask: Tensor | None,
        attention_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor] | None]:
        """The new queries, and with `need_weights` the self-attention weights and the cross-attention's sampling
        (locations, weights)."""
        query = x + query_pos
        attended, self_weights = self.self_attn(query, query, x, None, need_weights, attention_mask)
        x = self.self_attn_layer_norm(x + F.dropout(attended, self.dropout, self.training))
        attended = self.encoder_attn(x + query_pos, reference_points, memory, shapes, mask, need_weights)
        attended, sampling = attended if need_weights else (attended, None)
        x = self.encoder_attn_layer_norm(x + F.dropout(attended, self.dropout, self.training))
        return self.final_layer_norm(x + self.mlp(x)), self_weights, sampling


class DecoderOutput(NamedTuple):
    """What a decoder returns, per layer: its output `(batch, queries, d_model)`, the reference (points
    `(batch, queries, 2)` or boxes `(..., 4)`) its prediction refines, and with `output_attentions` the self-attention
    weights `(batch, heads, queries, queries)`, the cross-attention weights `(batch, queries, heads, levels, points)`
    and sampling locations `(batch, queries, heads, levels, points, 2)` (x, y in [0, 1] of the padded feature maps)."""

    hidden_states: list[Tensor]
    references: list[Tensor]
    self_attentions: tuple[Tensor, ...] = ()
    cross_attentions: tuple[Tensor, ...] = ()
    sampling_locations: tuple[Tensor, ...] = ()


class DeformableDetrDecoder(nn.Module):
    """`config.decoder_layers` layers of self-attention between queries and deformable cross-attention to the memory;
    with `anchor_queries`, each layer's query positions come from its current boxes (`ref_point_head`, DAB-DETR)."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.layers = nn.ModuleList(DeformableDetrDecoderLayer(config) for _ in range(config.decoder_layers))
        d = config.d_model
        self.ref_point_head = DetrMLPPredictionHead(2 * d, d, d, num_layers=2) if config.anchor_queries else None
        self.look_forward_twice = config.look_forward_twice

    def forward(
        self,
        target: Tensor,
        reference: Tensor,
        memory: Tensor,
        spatial_shapes: list[tuple[int, int]],
        mask: Tensor | None,
        query_pos: Tensor | None = None,
        box_heads: nn.ModuleList | None = None,
        attention_mask: Tensor | None = None,
        output_attentions: bool = False,
    ) -> DecoderOutput:
        """The decoder contract. `target`: `(batch, queries, d_model)` content queries; `reference`: their points
        `(batch, queries, 2)` or boxes `(..., 4)` in [0, 1]; `memory`, `spatial_shapes`, `mask`: the encoder's (see
        its contract); `query_pos`: `(batch, queries, d_model)`, None to derive it from the boxes; `box_heads`: one
        per layer, for iterative refinement (layer i+1 samples around layer i's refined box, detached; its prediction
        refines the same box not detached with `look_forward_twice`); `attention_mask`: `(queries, queries)` bool,
        True where a query may attend."""
        ratios = valid_ratios(mask, spatial_shapes, memory)
        x, head_reference = target, reference
        hidden_states, references, attentions = [], [], []
        for i, layer in enumerate(self.layers):
            scale = ratios if reference.shape[-1] == 2 else torch.cat([ratios, ratios], -1)
            layer_reference = reference[:, :, None] * scale[:, None]
            if self.ref_point_head is not None:
                embedding = box_position_embedding(layer_reference[:, :, 0], x.shape[-1] // 2)
                query_pos = self.ref_point_head(embedding)
            references.append(head_reference)
            x, self_weights, sampling = layer(
                x, query_pos, layer_reference, memory, spatial_shapes, mask, attention_mask, output_attentions
            )
            hidden_states.append(x)
            if output_attentions:
                attentions.append((self_weights, sampling[1], sampling[0]))
            if box_heads is not None:
                refined = refine_boxes(box_heads[i](x), reference)
                reference = refined.detach()
                head_reference = refined if self.look_forward_twice else reference
        return DecoderOutput(hidden_states, references, *(tuple(kind) for kind in zip(*attentions)))


__all__ = [
    "DecoderOutput",
    "DeformableDetrDecoder",
    "DeformableDetrDecoderLayer",
    "DeformableDetrEncoder",
    "DeformableDetrEncoderLayer",
    "valid_ratios",
]
