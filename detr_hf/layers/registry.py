"""Which encoder and decoder a multi-scale model builds: `config.encoder_type` and `config.decoder_type`.

A new encoder (e.g. RT-DETR's hybrid encoder) is one new module in this package and one line in `ENCODERS`; a config
then picks it by name. The contracts (see `DeformableDetrEncoder.forward` and `DeformableDetrDecoder.forward`):
- encoder: built from the config; `forward(memory, pos, spatial_shapes, mask) -> memory`, with `memory` and `pos`
  `(batch, tokens, d_model)` (the feature levels flattened one after the other), `spatial_shapes` the `(height,
  width)` of each level and `mask` `(batch, tokens)` True on real tokens, or None when nothing is padded;
- decoder: built from the config; `forward(target, reference, memory, spatial_shapes, mask, query_pos=None,
  box_heads=None, attention_mask=None, output_attentions=False) -> DecoderOutput`.
"""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig

from .deformable_transformer import DeformableDetrDecoder, DeformableDetrEncoder

ENCODERS: dict[str, type[nn.Module]] = {"deformable": DeformableDetrEncoder}
DECODERS: dict[str, type[nn.Module]] = {"deformable": DeformableDetrDecoder}


def _build(registry: dict[str, type[nn.Module]], option: str, config: PretrainedConfig) -> nn.Module:
    name = getattr(config, option)
    if name not in registry:
        raise ValueError(f"{option}={name!r} is not a known {option[: -len('_type')]}; known: {sorted(registry)}.")
    return registry[name](config)


def build_encoder(config: PretrainedConfig) -> nn.Module:
    """The encoder `config.encoder_type` names."""
    return _build(ENCODERS, "encoder_type", config)


def build_decoder(config: PretrainedConfig) -> nn.Module:
    """The decoder `config.decoder_type` names."""
    return _build(DECODERS, "decoder_type", config)


__all__ = ["DECODERS", "ENCODERS", "build_decoder", "build_encoder"]
