"""DETR's transformer: post-norm encoder layers (self-attention over the feature map) and decoder layers
(self-attention between object queries, cross-attention to the encoder's memory), each with a feed-forward block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from .attention import DetrAttention


class DetrMLP(nn.Module):
    """The feed-forward block of a transformer layer: `d_model -> ffn_dim -> d_model`, with dropout."""

    def __init__(self, config: PretrainedConfig, ffn_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.activation = ACT2FN[config.activation_function]
        self.activation_dropout, self.dropout = config.activation_dropout, config.dropout

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)


class DetrEncoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig):
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
    def __init__(self, config: PretrainedConfig):
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
    """`config.encoder_layers` encoder layers over the flattened feature map."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.layers = nn.ModuleList(DetrEncoderLayer(config) for _ in range(config.encoder_layers))
        self.dropout = config.dropout

    def forward(
        self, x: Tensor, pos: Tensor, mask: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """`x`, `pos`: `(batch, tokens, d_model)`; `mask`: `(batch, tokens)` True on real tokens, or None. Returns the
        memory and, with `need_weights`, each layer's attention weights."""
        x = F.dropout(x, self.dropout, self.training)
        attentions = ()
        for layer in self.layers:
            x, weights = layer(x, pos, mask, need_weights)
            attentions += (weights,) if need_weights else ()
        return x, attentions


class DetrDecoder(nn.Module):
    """`config.decoder_layers` decoder layers, starting from zero content, and the final LayerNorm."""

    def __init__(self, config: PretrainedConfig):
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


__all__ = ["DetrDecoder", "DetrDecoderLayer", "DetrEncoder", "DetrEncoderLayer", "DetrMLP"]
