"""DETR (Carion et al. 2020) as a transformers `PreTrainedModel`: backbone, sine positions, encoder, decoder, heads.

Parameter names follow transformers' DETR, so its checkpoints map onto this model with a few renames
(`checkpoint_conversion.py`). Unlike transformers, the decoder's auxiliary outputs never change its final output
(as in the original DETR), attention runs through `scaled_dot_product_attention`, and under autocast the decoder and
heads stay in fp32 so that low-precision inference keeps boxes exact to a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .backbone import DetrConvEncoder
from .configuration_detr import DetrConfig
from .loss import SetCriterion


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
    exponent = 2 * torch.div(torch.arange(num_features, device=mask.device), 2, rounding_mode="floor") / num_features
    frequencies = temperature**exponent
    pos_x, pos_y = x[..., None] / frequencies, y[..., None] / frequencies
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)


class DetrAttention(nn.Module):
    """Multi-head attention whose queries and keys carry position embeddings and values do not.

    When queries and keys are the same tensor (self-attention), their projections run as one fused matmul.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_mask: Tensor | None = None,
        need_weights: bool = False,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """`key_mask`: `(batch, key_len)` bool, True for keys to attend to; `attention_mask`: `(query_len, key_len)`
        bool, True where a query may attend; None attends everywhere."""
        if query is key:
            weight = torch.cat((self.q_proj.weight, self.k_proj.weight))
            bias = torch.cat((self.q_proj.bias, self.k_proj.bias))
            q, k = F.linear(query, weight, bias).chunk(2, dim=-1)
        else:
            q, k = self.q_proj(query), self.k_proj(key)
        v = self.v_proj(value)
        q, k, v = (self._split_heads(t) for t in (q, k, v))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        if attention_mask is not None:
            mask = attention_mask if mask is None else mask & attention_mask
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(-1)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.o_proj(out.transpose(1, 2).flatten(2)), weights

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)


class DetrMLP(nn.Module):
    def __init__(self, config: DetrConfig, ffn_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.activation = ACT2FN[config.activation_function]
        self.activation_dropout, self.dropout = config.activation_dropout, config.dropout

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)


class DetrEncoderLayer(nn.Module):
    def __init__(self, config: DetrConfig):
        super().__init__()
        self.self_attn = DetrAttention(config.d_model, config.encoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.mlp = DetrMLP(config, config.encoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = config.dropout

    def forward(
        self, x: Tensor, pos: Tensor, mask: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        query = x + pos
        attended, weights = self.self_attn(query, query, x, mask, need_weights)
        x = self.self_attn_layer_norm(x + F.dropout(attended, self.dropout, self.training))
        return self.final_layer_norm(x + self.mlp(x)), weights


class DetrDecoderLayer(nn.Module):
    def __init__(self, config: DetrConfig):
        super().__init__()
        self.self_attn = DetrAttention(config.d_model, config.decoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.encoder_attn = DetrAttention(config.d_model, config.decoder_attention_heads, config.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.mlp = DetrMLP(config, config.decoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = config.dropout

    def forward(
        self, x: Tensor, query_pos: Tensor, memory_key: Tensor, memory: Tensor, mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        query = x + query_pos
        attended, self_weights = self.self_attn(query, query, x, None, need_weights)
        x = self.self_attn_layer_norm(x + F.dropout(attended, self.dropout, self.training))
        attended, cross_weights = self.encoder_attn(x + query_pos, memory_key, memory, mask, need_weights)
        x = self.encoder_attn_layer_norm(x + F.dropout(attended, self.dropout, self.training))
        return self.final_layer_norm(x + self.mlp(x)), self_weights, cross_weights


class DetrEncoder(nn.Module):
    def __init__(self, config: DetrConfig):
        super().__init__()
        self.layers = nn.ModuleList(DetrEncoderLayer(config) for _ in range(config.encoder_layers))
        self.dropout = config.dropout

    def forward(
        self, x: Tensor, pos: Tensor, mask: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        x = F.dropout(x, self.dropout, self.training)
        attentions = ()
        for layer in self.layers:
            x, weights = layer(x, pos, mask, need_weights)
            attentions += (weights,) if need_weights else ()
        return x, attentions


class DetrDecoder(nn.Module):
    def __init__(self, config: DetrConfig):
        super().__init__()
        self.layers = nn.ModuleList(DetrDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layernorm = nn.LayerNorm(config.d_model)

    def forward(
        self, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, mask: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Returns every layer's normed output `(layers, batch, queries, d_model)` and the attention maps."""
        x = torch.zeros_like(query_pos)
        memory_key = memory + memory_pos
        outputs, self_attentions, cross_attentions = [], (), ()
        for layer in self.layers:
            x, self_weights, cross_weights = layer(x, query_pos, memory_key, memory, mask, need_weights)
            outputs.append(self.layernorm(x))
            if need_weights:
                self_attentions += (self_weights,)
                cross_attentions += (cross_weights,)
        return torch.stack(outputs), self_attentions, cross_attentions


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
        from .checkpoint_conversion import load_pretrained

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
        padded = not bool(mask.all())
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


class DetrMLPPredictionHead(nn.Module):
    """The box head: a small MLP with ReLU between layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(dims, [*dims[1:], output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DetrForObjectDetection(DetrPreTrainedModel):
    """DETR with its class and box heads and, given `labels`, the Hungarian set-prediction loss."""

    def __init__(self, config: DetrConfig):
        super().__init__(config)
        self.model = DetrModel(config)
        self.class_labels_classifier = nn.Linear(config.d_model, config.num_classes_with_background)
        self.bbox_predictor = DetrMLPPredictionHead(config.d_model, config.d_model, 4, num_layers=3)
        self.criterion = SetCriterion(config)
        self.post_init()

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
        [`DetrImageProcessor`] returns them."""
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
