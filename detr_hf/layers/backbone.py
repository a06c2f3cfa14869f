"""The convolutional backbone: any transformers backbone, run channels-last, returning its feature maps with their
padding masks. With frozen BatchNorm (DETR's default) the BatchNorm is frozen and, as one visible step, fused for
inference (`cpu_fusion.fuse_for_cpu_inference`)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoBackbone, PretrainedConfig

from ..precision import warn_if_cpu_bf16_autocast
from .cpu_fusion import fuse_for_cpu_inference
from .frozen_batch_norm import freeze_batch_norm

logger = logging.getLogger(__name__)


def _relu_in_place(module: nn.Module) -> None:
    """ReLUs in place: their inputs (a convolution's or a residual sum's output) are needed by no backward, and every
    skipped allocation of a full feature map counts on CPU."""
    for name, child in module.named_children():
        if type(child) is nn.ReLU:
            setattr(module, name, nn.ReLU(inplace=True))
        else:
            _relu_in_place(child)


def inflate_input_conv(weight: Tensor, num_channels: int) -> Tensor:
    """Adapts pretrained RGB first-conv weights `(out, 3, k, k)` to `num_channels` inputs, keeping the response to a
    gray image: 1 channel sums the RGB filters; more channels cycle through them, rescaled by 3 / num_channels."""
    if weight.shape[1] == num_channels:
        return weight
    if num_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-num_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :num_channels] * (weight.shape[1] / num_channels)


class DetrConvEncoder(nn.Module):
    """Runs the backbone in channels-last layout and returns its feature maps with their padding masks.

    Reads from the model config: `backbone_config`, `backbone`, `use_pretrained_backbone`, `num_channels`,
    `freeze_backbone_batch_norms` and `frozen_backbone_stages`. The transformers backbone is `self.model`.
    """

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        backbone_config = config.backbone_config
        backbone_config.num_channels = config.num_channels  # may have been set after the config was built
        if config.use_pretrained_backbone:
            if not config.backbone:
                raise ValueError("use_pretrained_backbone=True needs `backbone`, a Hub id or folder of a backbone.")
            self.model = AutoBackbone.from_pretrained(
                config.backbone, out_features=backbone_config.out_features, num_channels=3
            )
            if config.num_channels != 3:
                self._inflate_stem(config.num_channels)
        else:
            self.model = AutoBackbone.from_config(backbone_config)
        if config.freeze_backbone_batch_norms:
            freeze_batch_norm(self.model)
            fuse_for_cpu_inference(self.model)
        _relu_in_place(self.model)
        self.channels = self.model.channels
        self.freeze_stages(config.frozen_backbone_stages)

    def _inflate_stem(self, num_channels: int) -> None:
        conv = next(m for m in self.model.modules() if isinstance(m, nn.Conv2d))
        conv.weight = nn.Parameter(inflate_input_conv(conv.weight.detach(), num_channels))
        conv.in_channels = num_channels
        self.model.config.num_channels = num_channels
        for module in self.model.modules():
            if hasattr(module, "num_channels") and isinstance(module.num_channels, int):
                module.num_channels = num_channels
        logger.info("Inflated the pretrained backbone's first convolution from 3 to %d channels.", num_channels)

    def freeze_stages(self, frozen_stages: int) -> None:
        """Trains stages with index >= `frozen_stages` (0-based); the stem only when `frozen_stages` is -1."""
        for name, parameter in self.model.named_parameters():
            stage = _stage_index(name)
            trainable = frozen_stages < 0 or (stage is not None and stage >= frozen_stages)
            parameter.requires_grad_(trainable)

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None) -> list[tuple[Tensor, Tensor | None]]:
        """Per feature map (in the backbone's `out_features` order): `(batch, channels, h, w)` and its
        `(batch, h, w)` bool mask, True on real pixels (None without `pixel_mask`)."""
        warn_if_cpu_bf16_autocast(pixel_values)
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        feature_maps = self.model(pixel_values).feature_maps
        out = []
        for feature_map in feature_maps:
            mask = None
            if pixel_mask is not None:
                mask = F.interpolate(pixel_mask[None].float(), size=feature_map.shape[-2:])[0].bool()
            out.append((feature_map, mask))
        return out


def _stage_index(parameter_name: str) -> int | None:
    """Stage number of a backbone parameter (`encoder.stages.2.…` -> 2), None for stems and heads."""
    parts = parameter_name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "stages" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


__all__ = ["DetrConvEncoder", "inflate_input_conv"]
