"""Query selection: where a multi-scale decoder's queries come from. One component, one interface:

    selection(memory, mask, spatial_shapes, class_head, box_head) -> SelectedQueries(target, reference, query_pos,
                                                                                    proposals)

Schemes (`query_scheme(config)` picks one from the config, in one place):
- "learned" (Deformable DETR): learned embeddings, half position, half content; a linear layer gives the points.
- "anchors" (DAB-DETR): learned 4-D anchor boxes and learned content; positions come from the boxes in the decoder.
- "two_stage" (two-stage Deformable DETR): the encoder's top-scoring proposals give boxes, positions and content.
- "two_stage_anchors": the proposals give the anchor boxes; the content is the selected encoder features.
- "mixed" (DINO's mixed query selection): the proposals give the anchor boxes; the content is learned.

A component's parameters keep the names checkpoints use (`model.content_embed`, `model.enc_output`, ...):
`register_on(model)` registers them on the model itself and keeps the component as `model.query_selection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig
from transformers import initialization as init

from .heads import inverse_sigmoid
from .position_encoding import box_position_embedding


@dataclass
class SelectedQueries:
    """The decoder's queries: `target` `(batch, queries, d_model)` content; `reference` `(batch, queries, 2)` points
    or `(..., 4)` boxes (cx, cy, w, h) in [0, 1], not needing gradients; `query_pos` `(batch, queries, d_model)` or
    None when the decoder derives positions from the boxes; `proposals`: with two-stage, the selected proposals' class
    logits `(batch, queries, classes)` and boxes `(batch, queries, 4)`, trained by the criterion's `_enc` terms."""

    target: Tensor
    reference: Tensor
    query_pos: Tensor | None = None
    proposals: tuple[Tensor, Tensor] | None = None


class QuerySelection(nn.Module):
    """Base of the query-selection schemes; `num_queries`: the queries the decoder gets (besides denoising ones)."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.num_queries = config.two_stage_num_proposals if config.two_stage else config.num_queries
        self.d_model = config.d_model

    # Each scheme defines `forward(memory, mask, spatial_shapes, class_head=None, box_head=None) -> SelectedQueries`:
    # `memory`, `mask`, `spatial_shapes` are the encoder's output and inputs (see `registry`); `class_head` and
    # `box_head` score and place two-stage proposals. nn.Module's own forward raises for a scheme that lacks one.

    def register_on(self, host: nn.Module) -> None:
        """Registers this component's modules on `host` under their own names (the checkpoints' keys) and keeps the
        component itself, unregistered, as `host.query_selection`."""
        for name, module in self.named_children():
            host.add_module(name, module)
        object.__setattr__(host, "query_selection", self)

    def _learned(self, embedding: nn.Embedding, batch: int) -> Tensor:
        return embedding.weight[None].expand(batch, -1, -1)


class LearnedQueries(QuerySelection):
    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.query_position_embeddings = nn.Embedding(self.num_queries, 2 * config.d_model)
        self.reference_points = nn.Linear(config.d_model, 2)

    def forward(self, memory, mask, spatial_shapes, class_head=None, box_head=None) -> SelectedQueries:
        query_pos, target = self._learned(self.query_position_embeddings, memory.shape[0]).chunk(2, dim=-1)
        return SelectedQueries(target, self.reference_points(query_pos).sigmoid(), query_pos)


class AnchorQueries(QuerySelection):
    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.anchor_embed = nn.Embedding(self.num_queries, 4)  # learned boxes, in logit space
        self.content_embed = nn.Embedding(self.num_queries, config.d_model)

    def reset_anchors(self) -> None:
        """DAB-DETR's anchors: centres anywhere, sizes 0.05 to 0.5 (through transformers' init functions, which leave
        weights loaded from a checkpoint alone)."""
        anchors = torch.rand(self.anchor_embed.weight.shape)
        anchors[:, 2:] = anchors[:, 2:] * 0.45 + 0.05
        init.copy_(self.anchor_embed.weight, inverse_sigmoid(anchors))

    def forward(self, memory, mask, spatial_shapes, class_head=None, box_head=None) -> SelectedQueries:
        batch = memory.shape[0]
        return SelectedQueries(
            self._learned(self.content_embed, batch), self.anchor_embed.weight.sigmoid()[None].expand(batch, -1, -1)
        )


def encoder_proposals(memory: Tensor, valid: Tensor, shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Two-stage Deformable DETR's anchor for every encoder token: a box centred on its cell, 0.05 * 2^level wide,
    in logit space (`inf` on padding and near the border, where no proposal is kept), and the token's features with
    those positions zeroed. `valid`: `(batch, tokens)` True on real tokens."""
    batch = memory.shape[0]
    proposals, start = [], 0
    for level, (height, width) in enumerate(shapes):
        level_valid = valid[:, start : start + height * width].view(batch, height, width)
        size = torch.stack([level_valid[:, 0, :].sum(1), level_valid[:, :, 0].sum(1)], -1).to(memory.dtype)
        y, x = torch.meshgrid(
            torch.arange(height, dtype=memory.dtype, device=memory.device),
            torch.arange(width, dtype=memory.dtype, device=memory.device),
            indexing="ij",
        )
        centres = (torch.stack([x, y], -1)[None] + 0.5) / size[:, None, None, :]
        sizes = torch.full_like(centres, 0.05 * 2.0**level)
        proposals.append(torch.cat([centres, sizes], -1).view(batch, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    keep = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True) & valid[..., None]
    logits = torch.log(proposals / (1 - proposals)).masked_fill(~keep, float("inf"))
    return memory.masked_fill(~keep, 0.0), logits


class _TwoStage(QuerySelection):
    """The encoder's `num_queries` top-scoring proposals (by the first class logit): scored and placed by the
    given heads on the encoder's features (`enc_output`, `enc_output_norm`)."""

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.enc_output = nn.Linear(config.d_model, config.d_model)
        self.enc_output_norm = nn.LayerNorm(config.d_model)

    def _select(
        self,
        memory: Tensor,
        mask: Tensor | None,
        shapes: list,
        class_head: nn.Module | None,
        box_head: nn.Module | None,
    ) -> tuple[Tensor, Tensor, SelectedQueries]:
        """The proposals' features `(batch, tokens, d_model)`, the indices of the selected ones `(batch, queries)`,
        and the selection with their boxes as references (its `target` still the features)."""
        if class_head is None or box_head is None:
            raise ValueError("two_stage=True: the proposals are scored by DeformableDetrForObjectDetection's heads.")
        valid = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device) if mask is None else mask
        features, anchors = encoder_proposals(memory, valid, shapes)
        features = self.enc_output_norm(self.enc_output(features))
        scores = class_head(features)
        box_logits = box_head(features) + anchors
        top = scores[..., 0].topk(self.num_queries, dim=1).indices
        top_logits = box_logits.gather(1, top[..., None].expand(-1, -1, 4))
        proposals = (scores.gather(1, top[..., None].expand(-1, -1, scores.shape[-1])), top_logits.sigmoid())
        return features, top, SelectedQueries(features, top_logits.detach().sigmoid(), None, proposals)


class TwoStageQueries(_TwoStage):
    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.pos_trans = nn.Linear(2 * config.d_model, 2 * config.d_model)
        self.pos_trans_norm = nn.LayerNorm(2 * config.d_model)

    def forward(self, memory, mask, spatial_shapes, class_head=None, box_head=None) -> SelectedQueries:
        _, _, selected = self._select(memory, mask, spatial_shapes, class_head, box_head)
        embedding = self.pos_trans(box_position_embedding(selected.reference, self.d_model // 2))
        selected.query_pos, selected.target = self.pos_trans_norm(embedding).chunk(2, dim=-1)
        return selected


class TwoStageAnchorQueries(_TwoStage):
    def forward(self, memory, mask, spatial_shapes, class_head=None, box_head=None) -> SelectedQueries:
        features, top, selected = self._select(memory, mask, spatial_shapes, class_head, box_head)
        selected.target = features.gather(1, top[..., None].expand(-1, -1, features.shape[-1])).detach()
        return selected


class MixedQuerySelection(_TwoStage):
    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.content_embed = nn.Embedding(self.num_queries, config.d_model)

    def forward(self, memory, mask, spatial_shapes, class_head=None, box_head=None) -> SelectedQueries:
        _, _, selected = self._select(memory, mask, spatial_shapes, class_head, box_head)
        selected.target = self._learned(self.content_embed, memory.shape[0])
        return selected


QUERY_SELECTIONS: dict[str, type[QuerySelection]] = {
    "learned": LearnedQueries,
    "anchors": AnchorQueries,
    "two_stage": TwoStageQueries,
    "two_stage_anchors": TwoStageAnchorQueries,
    "mixed": MixedQuerySelection,
}


def query_scheme(config: PretrainedConfig) -> str:
    """The scheme the config's `two_stage`, `anchor_queries` and `mixed_query_selection` options name."""
    if not config.two_stage:
        return "anchors" if config.anchor_queries else "learned"
    if not config.anchor_queries:
        return "two_stage"
    return "mixed" if config.mixed_query_selection else "two_stage_anchors"


def build_query_selection(config: PretrainedConfig) -> QuerySelection:
    return QUERY_SELECTIONS[query_scheme(config)](config)


__all__ = [
    "QUERY_SELECTIONS",
    "AnchorQueries",
    "LearnedQueries",
    "MixedQuerySelection",
    "QuerySelection",
    "SelectedQueries",
    "TwoStageAnchorQueries",
    "TwoStageQueries",
    "build_query_selection",
    "encoder_proposals",
    "query_scheme",
]
