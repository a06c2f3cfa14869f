"""The convolutional backbone: any transformers backbone, with frozen BatchNorm folded into the convolutions."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoBackbone
from transformers.models.resnet.modeling_resnet import ResNetConvLayer, ResNetShortCut

from .configuration_detr import DetrConfig

logger = logging.getLogger(__name__)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (stored as buffers, as in DETR)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale[:, None, None] + shift[:, None, None]


def _folded_conv(conv: nn.Conv2d, norm: FrozenBatchNorm2d, x: Tensor) -> Tensor:
    """conv followed by a frozen BatchNorm, as one convolution: saves a full pass over every feature map."""
    scale, shift = norm.scale_and_shift()
    weight = conv.weight * scale[:, None, None, None]
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class _FoldedResNetConvLayer(ResNetConvLayer):
    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.activation(_folded_conv(self.convolution, self.normalization, hidden_states))


class _FoldedResNetShortCut(ResNetShortCut):
    def forward(self, hidden_states: Tensor) -> Tensor:
        return _folded_conv(self.convolution, self.normalization, hidden_states)


def freeze_batch_norm(module: nn.Module) -> None:
    """Replaces every BatchNorm2d below `module` by a FrozenBatchNorm2d with the same statistics, and folds it into
    the preceding convolution where the layer is a transformers ResNet conv layer (parameter names are unchanged)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            if child.running_mean is not None and child.running_mean.device.type != "meta":
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    if type(module) is ResNetConvLayer:
        module.__class__ = _FoldedResNetConvLayer
    elif type(module) is ResNetShortCut:
        module.__class__ = _FoldedResNetShortCut


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
    """Runs the backbone in channels-last layout and returns its feature maps with their padding masks."""

    def __init__(self, config: DetrConfig):
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
        with torch.no_grad():
            freeze_batch_norm(self.model)
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
