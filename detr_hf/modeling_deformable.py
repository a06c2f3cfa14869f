"""Deformable DETR (Zhu et al. 2021) and its DINO-style options, assembled from `detr_hf.layers`.

backbone -> multi-scale projections -> encoder (`config.encoder_type`) -> query selection (learned, anchors,
two-stage or mixed; `layers.query_selection`) [+ denoising queries in training] -> decoder (`config.decoder_type`)
with iterative box refinement -> class and box heads -> set criterion. Classification is sigmoid focal. Parameter names
are transformers' `DeformableDetrForObjectDetection`'s, so its checkpoints load as they are (see
`checkpoint_conversion`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_deformable import DeformableDetrConfig
from .layers.backbone import DetrConvEncoder
from .layers.criterion import SetCriterion
from .layers.deformable_attention import MultiScaleDeformableAttention
from .layers.denoising import DenoisingQueries, make_denoising_queries
from .layers.heads import DetrMLPPredictionHead, refine_boxes, shrink_class_heads
from .layers.multi_scale import flatten_levels, input_projections
from .layers.query_selection import AnchorQueries, build_query_selection
from .layers.registry import build_decoder, build_encoder
from .modeling_detr import DetrObjectDetectionOutput, DetrPreTrainedModel, refuse_unsupported


@dataclass
class DeformableDetrModelOutput(ModelOutput):
    """Output of [`DeformableDetrModel`].

    Args:
        last_hidden_state: `(batch, queries, d_model)`, the last decoder layer's output. In training with denoising,
            the `denoising.num_queries` denoising queries come first, then the matching queries.
        intermediate_hidden_states: `(decoder_layers, batch, queries, d_model)`, every decoder layer's output.
        intermediate_reference_points: per decoder layer, the reference its prediction refines: `(batch, queries, 2)`
            points (the first layer of learned queries) or `(batch, queries, 4)` boxes (cx, cy, w, h) in [0, 1].
        encoder_last_hidden_state: `(batch, tokens, d_model)`, the encoder's output, levels one after the other.
        enc_outputs_class, enc_outputs_boxes: with two-stage, the selected proposals' class logits
            `(batch, queries, classes)` and boxes `(batch, queries, 4)`.
        denoising: the denoising queries (training with `labels` and `num_denoising` only).
        decoder_attentions: with `output_attentions`, per decoder layer the self-attention weights
            `(batch, heads, queries, queries)`.
        cross_attentions: with `output_attentions`, per decoder layer the deformable cross-attention weights
            `(batch, queries, heads, levels, points)`, summing to 1 per query and head.
        sampling_locations: with `output_attentions`, per decoder layer where those weights sample:
            `(batch, queries, heads, levels, points, 2)`, (x, y) as fractions of the padded input.
    """

    last_hidden_state: Tensor | None = None
    intermediate_hidden_states: Tensor | None = None
    intermediate_reference_points: tuple[Tensor, ...] | None = None
    encoder_last_hidden_state: Tensor | None = None
    enc_outputs_class: Tensor | None = None
    enc_outputs_boxes: Tensor | None = None
    denoising: DenoisingQueries | None = None
    decoder_attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None
    sampling_locations: tuple[Tensor, ...] | None = None


@dataclass
class DeformableDetrObjectDetectionOutput(DetrObjectDetectionOutput):
    """Output of [`DeformableDetrForObjectDetection`]: [`DetrObjectDetectionOutput`]'s fields (`cross_attentions`
    being deformable attention weights) and, with `output_attentions`, `sampling_locations` (see
    [`DeformableDetrModelOutput`]); attentions cover the matching queries only. With `output_attentions`, also per
    decoder layer (matching queries only): `intermediate_reference_points`, the reference each layer samples around
    (see [`DeformableDetrModelOutput`]), and what each layer predicts: `intermediate_logits` `(decoder_layers,
    batch, queries, classes)` and `intermediate_pred_boxes` `(decoder_layers, batch, queries, 4)`, (cx, cy, w, h)
    in [0, 1] of the unpadded image."""

    sampling_locations: tuple[Tensor, ...] | None = None
    intermediate_reference_points: tuple[Tensor, ...] | None = None
    intermediate_logits: Tensor | None = None
    intermediate_pred_boxes: Tensor | None = None


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
            if isinstance(module.query_selection, AnchorQueries):
                module.query_selection.reset_anchors()
        elif any(module is head for head in getattr(self, "class_embed", ())):
            init.xavier_uniform_(module.weight)
            init.constant_(module.bias, -math.log((1 - 0.01) / 0.01))  # focal loss starts every class at 0.01
        elif any(module is box.layers[-1] for box in getattr(self, "bbox_embed", ())):
            init.zeros_(module.weight)  # the first boxes are the reference points
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class DeformableDetrModel(DeformableDetrPreTrainedModel):
    """Backbone, multi-scale input projections, encoder, query selection and decoder (the heads live in
    [`DeformableDetrForObjectDetection`], which lends them for two-stage proposals and box refinement)."""

    def __init__(self, config: DeformableDetrConfig):
        super().__init__(config)
        self.backbone = DetrConvEncoder(config)
        channels = list(self.backbone.channels)[-config.num_backbone_levels :]
        self.input_proj = input_projections(channels, config.d_model, config.num_feature_levels)
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, config.d_model))
        self.encoder = build_encoder(config)
        self.decoder = build_decoder(config)
        build_query_selection(config).register_on(self)  # as `self.query_selection`, its parameters on self
        self.denoising_label_embed = None
        if config.num_denoising:
            self.denoising_label_embed = nn.Embedding(config.num_labels + 1, config.d_model)  # + padding
        self.post_init()

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        bbox_embed: nn.ModuleList | None = None,
        class_embed: nn.ModuleList | None = None,
        labels: list[dict[str, Tensor]] | None = None,
        output_attentions: bool | None = None,
    ) -> DeformableDetrModelOutput:
        """`bbox_embed`: a box head per decoder layer to refine boxes with; `class_embed`, `bbox_embed`: with
        two-stage, their last heads score and place the proposals; `labels`: in training with `num_denoising`, the
        targets the denoising queries are made from."""
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if pixel_mask is None:
            batch, _, height, width = pixel_values.shape
            pixel_mask = torch.ones(batch, height, width, dtype=torch.long, device=pixel_values.device)
        features = self.backbone(pixel_values, pixel_mask)[-self.config.num_backbone_levels :]
        memory, pos, mask, shapes = flatten_levels(features, pixel_mask, self.input_proj, self.level_embed)
        memory = self.encoder(memory, pos, shapes, mask)
        heads = (class_embed[-1], bbox_embed[-1]) if class_embed is not None and bbox_embed is not None else ()
        queries = self.query_selection(memory, mask, shapes, *heads)
        target, reference, denoising, attention_mask = queries.target, queries.reference, None, None
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
            target, reference = denoising.prepend_to(target, reference)
            attention_mask = denoising.attention_mask
        decoded = self.decoder(
            target, reference, memory, shapes, mask, queries.query_pos, bbox_embed, attention_mask, output_attentions
        )
        proposals = queries.proposals or (None, None)
        return DeformableDetrModelOutput(
            last_hidden_state=decoded.hidden_states[-1],
            intermediate_hidden_states=torch.stack(decoded.hidden_states),
            intermediate_reference_points=tuple(decoded.references),
            encoder_last_hidden_state=memory,
            enc_outputs_class=proposals[0],
            enc_outputs_boxes=proposals[1],
            denoising=denoising,
            decoder_attentions=decoded.self_attentions or None,
            cross_attentions=decoded.cross_attentions or None,
            sampling_locations=decoded.sampling_locations or None,
        )


class DeformableDetrForObjectDetection(DeformableDetrPreTrainedModel):
    """Deformable DETR with its class and box heads (one per decoder layer with box refinement, plus the encoder's with
    two-stage) and, given `labels`, the set criterion; outputs as [`DetrForObjectDetection`]'s (logits have no "no
    object" column), post-processed with `use_focal_loss=True`."""

    def __init__(self, config: DeformableDetrConfig):
        super().__init__(config)
        d = config.d_model
        self.model = DeformableDetrModel(config)
        heads = (config.decoder_layers if config.with_box_refine else 1) + int(config.two_stage)  # + the encoder's
        self.class_embed = nn.ModuleList(nn.Linear(d, config.num_classes_with_background) for _ in range(heads))
        self.bbox_embed = nn.ModuleList(DetrMLPPredictionHead(d, d, 4, num_layers=3) for _ in range(heads))
        extra = {"_enc": config.two_stage, "_dn": config.num_denoising > 0}  # proposals, denoising queries
        self.criterion = SetCriterion(config, groups=tuple(group for group, used in extra.items() if used))
        self.post_init()

    def select_classes(self, rows: list[int], class_names: list[str]) -> None:
        """Keeps only the labels `rows` of the class heads (and of the denoising label embedding), in `class_names`'
        order: fine-tuning on a subset of a checkpoint's classes. Two-stage's proposal head keeps its objectness."""
        heads, proposal_heads = list(self.class_embed), []
        if self.config.two_stage:
            proposal_heads.append(heads.pop())
        embedding = self.model.denoising_label_embed
        shrink_class_heads(self.config, heads, rows, class_names, embedding, objectness_heads=proposal_heads)
        self.criterion.num_classes = len(class_names)

    def _head(self, layer: int) -> int:
        return layer if self.config.with_box_refine else 0

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        labels: list[dict[str, Tensor]] | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DeformableDetrObjectDetectionOutput | tuple:
        """`labels`: per image a dict with `class_labels` `(n,)` and `boxes` `(n, 4)` normalized (cx, cy, w, h).
        `output_attentions`: also return the decoder's attention weights and sampling locations (see
        [`DeformableDetrModelOutput`]). Other keyword arguments (transformers' plumbing) are ignored, but
        `output_hidden_states=True` is refused."""
        refuse_unsupported(kwargs)
        refine = self.bbox_embed if self.config.with_box_refine else None
        outputs = self.model(
            pixel_values, pixel_mask, refine, self.class_embed, labels=labels, output_attentions=output_attentions
        )
        logits, boxes = [], []
        for i, (x, reference) in enumerate(
            zip(outputs.intermediate_hidden_states, outputs.intermediate_reference_points)
        ):
            logits.append(self.class_embed[self._head(i)](x))
            boxes.append(refine_boxes(self.bbox_embed[self._head(i)](x), reference))
        denoising = outputs.denoising
        num_denoising = denoising.num_queries if denoising is not None else 0
        denoising_outputs = [(a[:, :num_denoising], b[:, :num_denoising]) for a, b in zip(logits, boxes)]
        logits, boxes = [a[:, num_denoising:] for a in logits], [b[:, num_denoising:] for b in boxes]
        loss = loss_dict = auxiliary_outputs = None
        if labels is not None:
            if self.config.auxiliary_loss:
                auxiliary_outputs = [{"logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
            _, loss_dict = self.criterion(logits[-1], boxes[-1], labels, auxiliary_outputs)
            if outputs.enc_outputs_class is not None:  # the encoder's proposals learn class-agnostic objectness
                objects = [{**t, "class_labels": torch.zeros_like(t["class_labels"])} for t in labels]
                proposals = [(outputs.enc_outputs_class, outputs.enc_outputs_boxes)]
                loss_dict.update(self.criterion.extra_losses(proposals, objects, "_enc"))
            if denoising is not None:  # the known assignment: each positive copy to its own object
                layers = denoising_outputs if self.config.auxiliary_loss else denoising_outputs[-1:]
                matching = denoising.matching(labels)
                loss_dict.update(self.criterion.extra_losses(layers, labels, "_dn", matching, denoising.groups))
            loss = self.criterion.weighted_sum(loss_dict)
        output = DeformableDetrObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits[-1],
            pred_boxes=boxes[-1],
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=outputs.last_hidden_state,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            **_matching_queries_attentions(outputs, num_denoising, logits, boxes),
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


def _matching_queries_attentions(
    outputs: DeformableDetrModelOutput, num_denoising: int, logits: list[Tensor], boxes: list[Tensor]
) -> dict:
    """The decoder's attentions and references without the denoising queries (none outside training), and the
    matching queries' per-layer `logits` and `boxes`."""
    if outputs.cross_attentions is None:
        return {}
    return {
        "decoder_attentions": tuple(a[:, :, num_denoising:, num_denoising:] for a in outputs.decoder_attentions),
        "cross_attentions": tuple(a[:, num_denoising:] for a in outputs.cross_attentions),
        "sampling_locations": tuple(a[:, num_denoising:] for a in outputs.sampling_locations),
        "intermediate_reference_points": tuple(r[:, num_denoising:] for r in outputs.intermediate_reference_points),
        "intermediate_logits": torch.stack(logits),
        "intermediate_pred_boxes": torch.stack(boxes),
    }


__all__ = [
    "DeformableDetrForObjectDetection",
    "DeformableDetrModel",
    "DeformableDetrModelOutput",
    "DeformableDetrObjectDetectionOutput",
    "DeformableDetrPreTrainedModel",
]
