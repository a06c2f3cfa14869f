"""DETR (Carion et al. 2020) as a transformers `PreTrainedModel`, assembled from `detr_hf.layers`: backbone, sine
positions, transformer encoder and decoder over learned object queries, class and box heads, set criterion.

Parameter names follow transformers' DETR, so its checkpoints map onto this model with a few renames
(`checkpoint_conversion.py`). Unlike transformers, the decoder's auxiliary outputs never change its final output
(as in the original DETR), attention runs through `scaled_dot_product_attention`, and under autocast the decoder and
heads stay in fp32 so that low-precision inference keeps boxes exact to a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .checkpoint_conversion import load_pretrained
from .configuration_detr import DetrConfig
from .layers.backbone import DetrConvEncoder
from .layers.criterion import SetCriterion
from .layers.heads import DetrMLPPredictionHead, shrink_class_heads
from .layers.position_encoding import sine_position_embedding
from .layers.tracing import is_exporting
from .layers.transformer import DetrDecoder, DetrEncoder


@dataclass
class DetrModelOutput(ModelOutput):
    """Output of [`DetrModel`].

    Args:
        last_hidden_state: `(batch, num_queries, d_model)`, the final decoder states (after the decoder norm).
        intermediate_hidden_states: `(decoder_layers, batch, num_queries, d_model)`, each decoder layer's normed
            output (the last equals `last_hidden_state`); returned for auxiliary losses or when asked.
        encoder_last_hidden_state: `(batch, height * width, d_model)`, the encoder's output.
        feature_mask: `(batch, height, width)` bool, True on real (unpadded) feature-map cells.
        encoder_attentions, decoder_attentions, cross_attentions: per layer, when `output_attentions=True`.
            Cross-attentions are `(batch, heads, num_queries, height, width)`: where each query looked.
    """

    last_hidden_state: Tensor | None = None
    intermediate_hidden_states: Tensor | None = None
    encoder_last_hidden_state: Tensor | None = None
    feature_mask: Tensor | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
    decoder_attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None


@dataclass
class DetrObjectDetectionOutput(ModelOutput):
    """Output of [`DetrForObjectDetection`].

    Args:
        loss: the weighted set-prediction loss, when `labels` are given.
        loss_dict: its terms (`loss_ce`, `loss_bbox`, `loss_giou`, `cardinality_error`, `_i` for auxiliary layer i).
        logits: `(batch, num_queries, num_labels + 1)` class logits, the last being "no object" (without it for focal
            loss).
        pred_boxes: `(batch, num_queries, 4)` boxes as (cx, cy, w, h) in [0, 1], relative to each image's unpadded size.
        auxiliary_outputs: one `{"logits", "pred_boxes"}` per decoder layer but the last, when auxiliary loss is on
            and `labels` are given.
        last_hidden_state, encoder_last_hidden_state, encoder_attentions, decoder_attentions, cross_attentions: see
            [`DetrModelOutput`].
    """

    loss: Tensor | None = None
    loss_dict: dict[str, Tensor] | None = None
    logits: Tensor | None = None
    pred_boxes: Tensor | None = None
    auxiliary_outputs: list[dict[str, Tensor]] | None = None
    last_hidden_state: Tensor | None = None
    encoder_last_hidden_state: Tensor | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
    decoder_attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None


def refuse_unsupported(kwargs: dict[str, Any]) -> None:
    """Detection forwards accept transformers' plumbing in `**kwargs` but refuse what they cannot honour."""
    if kwargs.get("output_hidden_states"):
        raise ValueError(
            "output_hidden_states=True is not supported: the decoder's per-layer states are the base model's "
            "`intermediate_hidden_states` (`model.model(...)`)."
        )


class DetrPreTrainedModel(PreTrainedModel):
    config_class = DetrConfig
    config: DetrConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _keys_to_ignore_on_load_unexpected = [r"num_batches_tracked"]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight, gain=self.config.init_xavier_std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight)
        elif isinstance(module, nn.Conv2d):  # the input projection: the backbone initializes its own convolutions
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, DetrForObjectDetection):
            init.zeros_(module.bbox_predictor.layers[-1].weight)
            init.zeros_(module.bbox_predictor.layers[-1].bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Loads detr_hf checkpoints and transformers' DETR checkpoints (all their layouts) alike; when the label set
        differs from the checkpoint's, the class head is re-initialized (logged) and the rest loads."""
        loaded = load_pretrained(super().from_pretrained, cls, pretrained_model_name_or_path, *model_args, **kwargs)
        # transformers loads the weights into new parameters, all trainable: freeze the backbone again
        (loaded[0] if isinstance(loaded, tuple) else loaded).apply_frozen_backbone_stages()
        return loaded

    def apply_frozen_backbone_stages(self) -> None:
        """Trains the backbone stages `config.frozen_backbone_stages` says (stages 2-4 by default: stem and stage 1
        frozen, as in DETR); every other parameter of the backbone is frozen."""
        for module in self.modules():
            if isinstance(module, DetrConvEncoder):
                module.freeze_stages(self.config.frozen_backbone_stages)


class DetrModel(DetrPreTrainedModel):
    """DETR without heads: backbone, input projection, encoder and decoder over learned object queries."""

    def __init__(self, config: DetrConfig):
        super().__init__(config)
        self.backbone = DetrConvEncoder(config)
        self.input_projection = nn.Conv2d(self.backbone.channels[-1], config.d_model, kernel_size=1)
        self.query_position_embeddings = nn.Embedding(config.num_queries, config.d_model)
        self.encoder = DetrEncoder(config)
        self.decoder = DetrDecoder(config)
        self.post_init()

    def freeze_backbone(self) -> None:
        self.backbone.model.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        self.backbone.freeze_stages(self.config.frozen_backbone_stages)

    def forward(
        self, pixel_values: Tensor, pixel_mask: Tensor | None = None, output_attentions: bool | None = None
    ) -> DetrModelOutput:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        feature_map, mask = self.backbone(pixel_values, pixel_mask)[-1]
        batch, _, height, width = feature_map.shape
        memory = self.input_projection(feature_map).flatten(2).transpose(1, 2).contiguous()
        if mask is None:
            mask = torch.ones(batch, height, width, dtype=torch.bool, device=memory.device)
        # An exported graph keeps the padded path, which is exact for unpadded inputs too (no data-dependent branch).
        padded = is_exporting() or not bool(mask.all())
        pos = sine_position_embedding(mask if padded else mask[:1], self.config.d_model // 2).to(memory.dtype)
        key_mask = mask.flatten(1) if padded else None
        memory, encoder_attentions = self.encoder(memory, pos, key_mask, output_attentions)
        # The decoder is cheap next to the backbone: keeping it in fp32 under autocast keeps boxes exact.
        with torch.autocast(device_type=memory.device.type, enabled=False):
            query_pos = self.query_position_embeddings.weight[None].expand(batch, -1, -1)
            hidden, self_attentions, cross_attentions = self.decoder(
                query_pos, memory.float(), pos.float(), key_mask, output_attentions
            )
        return DetrModelOutput(
            last_hidden_state=hidden[-1],
            intermediate_hidden_states=hidden,
            encoder_last_hidden_state=memory,
            feature_mask=mask,
            encoder_attentions=encoder_attentions or None,
            decoder_attentions=self_attentions or None,
            cross_attentions=tuple(a.unflatten(-1, (height, width)) for a in cross_attentions) or None,
        )


class DetrForObjectDetection(DetrPreTrainedModel):
    """DETR with its class and box heads and, given `labels`, the Hungarian set-prediction loss."""

    def __init__(self, config: DetrConfig):
        super().__init__(config)
        self.model = DetrModel(config)
        self.class_labels_classifier = nn.Linear(config.d_model, config.num_classes_with_background)
        self.bbox_predictor = DetrMLPPredictionHead(config.d_model, config.d_model, 4, num_layers=3)
        self.criterion = SetCriterion(config)
        self.post_init()

    def select_classes(self, rows: list[int], class_names: list[str]) -> None:
        """Keeps only the labels `rows` of the class head (and "no object"), in `class_names`' order: fine-tuning on a
        subset of a checkpoint's classes."""
        shrink_class_heads(self.config, [self.class_labels_classifier], rows, class_names)
        self.criterion.num_classes = len(class_names)

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        labels: list[dict[str, Tensor]] | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DetrObjectDetectionOutput | tuple:
        """`labels`: per image a dict with `class_labels` `(n,)` and `boxes` `(n, 4)` normalized (cx, cy, w, h), as
        [`DetrImageProcessor`] returns them. Other keyword arguments (transformers' plumbing) are ignored, but
        `output_hidden_states=True` is refused."""
        refuse_unsupported(kwargs)
        outputs = self.model(pixel_values, pixel_mask, output_attentions=output_attentions)
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):
            with_aux = labels is not None and self.config.auxiliary_loss
            hidden = outputs.intermediate_hidden_states if with_aux else outputs.last_hidden_state
            all_logits = self.class_labels_classifier(hidden)
            all_boxes = self.bbox_predictor(hidden).sigmoid()
        logits, pred_boxes = (all_logits[-1], all_boxes[-1]) if with_aux else (all_logits, all_boxes)
        loss = loss_dict = auxiliary_outputs = None
        if with_aux:
            auxiliary_outputs = [{"logits": a, "pred_boxes": b} for a, b in zip(all_logits[:-1], all_boxes[:-1])]
        if labels is not None:
            loss, loss_dict = self.criterion(logits, pred_boxes, labels, auxiliary_outputs)
        output = DetrObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=outputs.last_hidden_state,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_attentions=outputs.encoder_attentions,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


__all__ = ["DetrForObjectDetection", "DetrModel", "DetrModelOutput", "DetrObjectDetectionOutput", "DetrPreTrainedModel"]
