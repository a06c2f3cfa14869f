"""DETR's multi-head attention: queries and keys carry position embeddings, values do not."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DetrAttention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention` (explicit softmax when the weights are asked for).

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
        bool, True where a query may attend; None attends everywhere. Returns the output and, with `need_weights`,
        the attention weights `(batch, heads, query_len, key_len)`."""
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


__all__ = ["DetrAttention"]
