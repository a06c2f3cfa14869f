"""Deformable DETR (Zhu et al. 2021) with iterative box refinement, built from detr_hf's DETR parts.

Multi-scale features (the backbone's last stages, a projection per level, extra strided levels, level embeddings)
feed an encoder whose self-attention is multi-scale deformable attention; the decoder's queries carry reference points
(then boxes) that each layer refines, and look at the encoder's levels through deformable cross-attention.
Classification is sigmoid focal. Parameter names are transformers' `DeformableDetrForObjectDetection`'s, so its
checkpoints load as they are (see `checkpoint_conversion`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init

from .attention import MultiScaleDeformableAttention
from .backbone import DetrConvEncoder
from .configuration_deformable import DeformableDetrConfig
from .denoising import DenoisingQueries, make_denoising_queries
from .loss import SetCriterion
from .modeling_detr import (
    DetrAttention,
    DetrMLP,
    DetrMLPPredictionHead,
    DetrObjectDetectionOutput,
    DetrPreTrainedModel,
    sine_position_embedding,
)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x), clamped so that boxes at the image border stay finite."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)  # 32 groups as Deformable DETR when channels allow


class DeformableDetrEncoderLayer(nn.Module):
    def __init__(self, config: DeformableDetrConfig):
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


class DeformableDetrDecoderLayer(nn.Module):
    def __init__(self, config: DeformableDetrConfig):
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
    ) -> Tensor:
        query = x + query_pos
        attended, _ = self.self_attn(query, query, x, attention_mask=attention_mask)
        x = self.self_attn_layer_norm(x + F.dropout(attended, self.dropout, self.training))
        attended = self.encoder_attn(x + query_pos, reference_points, memory, shapes, mask)
        x = self.encoder_attn_layer_norm(x + F.dropout(attended, self.dropout, self.training))
        return self.final_layer_norm(x + self.mlp(x))


class DeformableDetrEncoder(nn.Module):
    def __init__(self, config: DeformableDetrConfig):
        super().__init__()
        self.layers = nn.ModuleList(DeformableDetrEncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(self, x: Tensor, pos: Tensor, shapes: list, mask: Tensor | None, valid_ratios: Tensor) -> Tensor:
        reference = _encoder_reference_points(shapes, valid_ratios)
        for layer in self.layers:
            x = layer(x, pos, reference, shapes, mask)
        return x


class DeformableDetrDecoder(nn.Module):
    def __init__(self, config: DeformableDetrConfig):
        super().__init__()
        self.layers = nn.ModuleList(DeformableDetrDecoderLayer(config) for _ in range(config.decoder_layers))
        d = config.d_model
        # anchor queries: position embeddings from the current boxes, anew in every layer (DAB-DETR)
        self.ref_point_head = DetrMLPPredictionHead(2 * d, d, d, num_layers=2) if config.anchor_queries else None
        self.look_forward_twice = config.look_forward_twice

    def forward(
        self,
        x: Tensor,
        query_pos: Tensor | None,
        reference: Tensor,
        memory: Tensor,
        shapes: list,
        mask: Tensor | None,
        valid_ratios: Tensor,
        bbox_embed: nn.ModuleList | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Each layer's output and the reference (points `(..., 2)` or boxes `(..., 4)`) its prediction refines;
        with `bbox_embed`, layer i+1 samples around layer i's refined box, detached (and its prediction refines the
        same box not detached with `look_forward_twice`). `query_pos` None: from the boxes (`ref_point_head`)."""
        hidden_states, references = [], []
        head_reference = reference
        for i, layer in enumerate(self.layers):
            scale = valid_ratios if reference.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)
            layer_reference = reference[:, :, None] * scale[:, None]
            if self.ref_point_head is not None:
                embedding = box_position_embedding(layer_reference[:, :, 0], x.shape[-1] // 2)
                query_pos = self.ref_point_head(embedding)
            references.append(head_reference)
            x = layer(x, query_pos, layer_reference, memory, shapes, mask, attention_mask)
            hidden_states.append(x)
            if bbox_embed is not None:
                refined = refine_boxes(bbox_embed[i](x), reference)
                reference = refined.detach()
                head_reference = refined if self.look_forward_twice else reference
        return hidden_states, references


def refine_boxes(delta: Tensor, reference: Tensor) -> Tensor:
    """Boxes (cx, cy, w, h) in [0, 1] from predicted logit-space deltas around reference points or boxes."""
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    return torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()


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


def box_position_embedding(boxes: Tensor, num_features: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding `(..., 4 * num_features)` of boxes (cx, cy, w, h) in [0, 1], each coordinate in turn."""
    exponent = 2 * torch.div(torch.arange(num_features, device=boxes.device), 2, rounding_mode="floor")
    frequencies = temperature ** (exponent / num_features)
    angles = boxes.float()[..., None] * (2 * math.pi) / frequencies
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), -1).flatten(-3).to(boxes.dtype)


def _valid_ratios(masks: list[Tensor]) -> Tensor:
    """Per image and level, the (width, height) share of the feature map that is not padding: `(batch, levels, 2)`."""
    ratios = []
    for mask in masks:
        height, width = mask.shape[-2:]
        ratios.append(torch.stack([mask[:, 0, :].sum(1) / width, mask[:, :, 0].sum(1) / height], -1))
    return torch.stack(ratios, 1).float()


def _encoder_reference_points(shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
    """Each feature cell's centre, normalized to its image's unpadded extent: `(batch, tokens, levels, 2)`."""
    points = []
    for level, (height, width) in enumerate(shapes):
        y, x = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, device=valid_ratios.device),
            torch.linspace(0.5, width - 0.5, width, device=valid_ratios.device),
            indexing="ij",
        )
        y = y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        x = x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((x, y), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


class DeformableDetrPreTrainedModel(DetrPreTrainedModel):
    config_class = DeformableDetrConfig
    config: DeformableDetrConfig

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' init functions skip tensors already initialized: special cases go first, instead of the default
        if isinstance(module, MultiScaleDeformableAttention):
            init.xavier_uniform_(module.value_proj.weight)
            init.xavier_uniform_(module.output_proj.weight)
            init.zeros_(module.value_proj.bias)
            init.zeros_(module.output_proj.bias)
            module.reset_offsets()
        elif isinstance(module, DeformableDetrModel):
            init.normal_(module.level_embed)
            if module.anchor_embed is not None:  # DAB-DETR's anchors: centres anywhere, sizes 0.05 to 0.5
                anchors = torch.rand(module.anchor_embed.weight.shape)
                anchors[:, 2:] = anchors[:, 2:] * 0.45 + 0.05
                init.copy_(module.anchor_embed.weight, inverse_sigmoid(anchors))
        elif any(module is head for head in getattr(self, "class_embed", ())):
            init.xavier_uniform_(module.weight)
            init.constant_(module.bias, -math.log((1 - 0.01) / 0.01))  # focal loss starts every class at 0.01
        elif any(module is box.layers[-1] for box in getattr(self, "bbox_embed", ())):
            init.zeros_(module.weight)  # the first boxes are the reference points
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class DeformableDetrModel(DeformableDetrPreTrainedModel):
    """Backbone, multi-scale input projections, deformable encoder and decoder; returns the decoder's per-layer
    hidden states and references (the heads live in [`DeformableDetrForObjectDetection`])."""

    def __init__(self, config: DeformableDetrConfig):
        super().__init__(config)
        d, levels = config.d_model, config.num_feature_levels
        self.backbone = DetrConvEncoder(config)
        channels = list(self.backbone.channels)[-config.num_backbone_levels :]
        projections = [nn.Sequential(nn.Conv2d(c, d, kernel_size=1), _group_norm(d)) for c in channels]
        for level in range(levels - len(channels)):
            in_channels = channels[-1] if level == 0 else d
            projections.append(
                nn.Sequential(nn.Conv2d(in_channels, d, kernel_size=3, stride=2, padding=1), _group_norm(d))
            )
        self.input_proj = nn.ModuleList(projections)
        self.level_embed = nn.Parameter(torch.empty(levels, d))
        self.encoder = DeformableDetrEncoder(config)
        self.decoder = DeformableDetrDecoder(config)
        num_queries = config.two_stage_num_proposals if config.two_stage else config.num_queries
        self.anchor_embed = self.content_embed = self.denoising_label_embed = None
        if config.two_stage:  # queries are the encoder's top-scoring proposals
            self.enc_output = nn.Linear(d, d)
            self.enc_output_norm = nn.LayerNorm(d)
            if not config.anchor_queries:
                self.pos_trans = nn.Linear(2 * d, 2 * d)
                self.pos_trans_norm = nn.LayerNorm(2 * d)
        elif config.anchor_queries:
            self.anchor_embed = nn.Embedding(num_queries, 4)  # learned boxes, in logit space
        else:  # learned queries: (position, content) halves, the position giving a reference point
            self.query_position_embeddings = nn.Embedding(num_queries, 2 * d)
            self.reference_points = nn.Linear(d, 2)
        if config.anchor_queries and (config.mixed_query_selection or not config.two_stage):
            self.content_embed = nn.Embedding(num_queries, d)
        if config.num_denoising:
            self.denoising_label_embed = nn.Embedding(config.num_labels + 1, d)  # + padding
        self.post_init()

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        bbox_embed: nn.ModuleList | None = None,
        class_embed: nn.ModuleList | None = None,
        labels: list[dict[str, Tensor]] | None = None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor], tuple[Tensor, Tensor] | None, DenoisingQueries | None]:
        """Encoder memory `(batch, tokens, d_model)`, each decoder layer's hidden states and reference, with
        two-stage the selected proposals' class logits and boxes (from the last `class_embed` and `bbox_embed`),
        and in training with `labels` and `num_denoising` the denoising queries, which come first in the decoder's
        outputs."""
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones(batch, height, width, dtype=torch.long, device=pixel_values.device)
        features = self.backbone(pixel_values, pixel_mask)[-self.config.num_backbone_levels :]
        maps = [projection(feature_map) for (feature_map, _), projection in zip(features, self.input_proj)]
        masks = [mask for _, mask in features]
        for projection in self.input_proj[len(maps) :]:
            maps.append(projection(features[-1][0] if len(maps) == len(features) else maps[-1]))
            size = maps[-1].shape[-2:]
            masks.append(F.interpolate(pixel_mask[None].to(pixel_values.dtype), size=size).to(torch.bool)[0])
        shapes = [tuple(m.shape[-2:]) for m in maps]
        memory = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        pos = torch.cat(
            [
                sine_position_embedding(mask, self.config.d_model // 2, offset=0.5) + self.level_embed[level]
                for level, mask in enumerate(masks)
            ],
            1,
        ).to(memory.dtype)
        flat_mask = torch.cat([m.flatten(1) for m in masks], 1)
        value_mask = None if bool(flat_mask.all()) else flat_mask
        valid_ratios = _valid_ratios(masks)
        memory = self.encoder(memory, pos, shapes, value_mask, valid_ratios)
        proposals = None
        if self.config.two_stage:
            if class_embed is None or bbox_embed is None:
                raise ValueError(
                    "two_stage=True: the proposals are scored by DeformableDetrForObjectDetection's heads."
                )
            features, anchors = encoder_proposals(memory, flat_mask, shapes)
            features = self.enc_output_norm(self.enc_output(features))
            scores = class_embed[-1](features)
            box_logits = bbox_embed[-1](features) + anchors
            top = scores[..., 0].topk(self.config.two_stage_num_proposals, dim=1).indices
            top_logits = box_logits.gather(1, top[..., None].expand(-1, -1, 4))
            proposals = (scores.gather(1, top[..., None].expand(-1, -1, scores.shape[-1])), top_logits.sigmoid())
            reference = top_logits.detach().sigmoid()
            query_pos = None
            if self.content_embed is not None:  # mixed query selection
                target = self.content_embed.weight[None].expand(batch, -1, -1)
            elif self.config.anchor_queries:
                target = features.gather(1, top[..., None].expand(-1, -1, features.shape[-1])).detach()
            else:
                embedding = self.pos_trans(box_position_embedding(reference, self.config.d_model // 2))
                query_pos, target = self.pos_trans_norm(embedding).chunk(2, dim=-1)
        elif self.config.anchor_queries:
            target = self.content_embed.weight[None].expand(batch, -1, -1)
            reference, query_pos = self.anchor_embed.weight.sigmoid()[None].expand(batch, -1, -1), None
        else:
            query_pos, target = self.query_position_embeddings.weight[None].expand(batch, -1, -1).chunk(2, dim=-1)
            reference = self.reference_points(query_pos).sigmoid()
        denoising = attention_mask = None
        if self.training and labels is not None and self.denoising_label_embed is not None:
            denoising = make_denoising_queries(
                labels,
                self.denoising_label_embed,
                self.config.num_denoising,
                target.shape[1],
                self.config.label_noise_ratio,
                self.config.box_noise_scale,
            )
        if denoising is not None:
            target = torch.cat([denoising.content.to(target.dtype), target], 1)
            reference = torch.cat([denoising.boxes.to(reference.dtype), reference], 1)
            attention_mask = denoising.attention_mask
        hidden_states, references = self.decoder(
            target, query_pos, reference, memory, shapes, value_mask, valid_ratios, bbox_embed, attention_mask
        )
        return memory, hidden_states, references, proposals, denoising


class DeformableDetrForObjectDetection(DeformableDetrPreTrainedModel):
    """Deformable DETR with iterative box refinement and sigmoid focal classification; outputs as
    [`DetrForObjectDetection`]'s (logits have no "no object" column), post-processed with `use_focal_loss=True`."""

    def __init__(self, config: DeformableDetrConfig):
        super().__init__(config)
        d = config.d_model
        self.model = DeformableDetrModel(config)
        heads = (config.decoder_layers if config.with_box_refine else 1) + int(config.two_stage)  # + the encoder's
        self.class_embed = nn.ModuleList(nn.Linear(d, config.num_classes_with_background) for _ in range(heads))
        self.bbox_embed = nn.ModuleList(DetrMLPPredictionHead(d, d, 4, num_layers=3) for _ in range(heads))
        self.criterion = SetCriterion(config)
        self.post_init()

    def _head(self, layer: int) -> int:
        return layer if self.config.with_box_refine else 0

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        labels: list[dict[str, Tensor]] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DetrObjectDetectionOutput | tuple:
        refine = self.bbox_embed if self.config.with_box_refine else None
        memory, hidden_states, references, proposals, denoising = self.model(
            pixel_values, pixel_mask, bbox_embed=refine, class_embed=self.class_embed, labels=labels
        )
        logits, boxes = [], []
        for i, (x, reference) in enumerate(zip(hidden_states, references)):
            logits.append(self.class_embed[self._head(i)](x))
            boxes.append(refine_boxes(self.bbox_embed[self._head(i)](x), reference))
        num_denoising = denoising.num_queries if denoising is not None else 0
        denoising_outputs = [(a[:, :num_denoising], b[:, :num_denoising]) for a, b in zip(logits, boxes)]
        logits, boxes = [a[:, num_denoising:] for a in logits], [b[:, num_denoising:] for b in boxes]
        loss = loss_dict = auxiliary_outputs = None
        if labels is not None:
            if self.config.auxiliary_loss:
                auxiliary_outputs = [{"logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
            _, loss_dict = self.criterion(logits[-1], boxes[-1], labels, auxiliary_outputs)
            if proposals is not None:  # the encoder's proposals learn class-agnostic objectness and boxes
                objects = [{**t, "class_labels": torch.zeros_like(t["class_labels"])} for t in labels]
                loss_dict.update(self.criterion.extra_losses([proposals], objects, "_enc"))
            if denoising is not None:  # the known assignment: each positive copy to its own object
                layers = denoising_outputs if self.config.auxiliary_loss else denoising_outputs[-1:]
                matching = denoising.matching(labels)
                loss_dict.update(self.criterion.extra_losses(layers, labels, "_dn", matching, denoising.groups))
            loss = self.criterion.weighted_sum(loss_dict)
        output = DetrObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits[-1],
            pred_boxes=boxes[-1],
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=hidden_states[-1],
            encoder_last_hidden_state=memory,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


__all__ = ["DeformableDetrForObjectDetection", "DeformableDetrModel", "DeformableDetrPreTrainedModel"]
