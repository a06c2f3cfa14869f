"""The convolutional backbone: any transformers backbone, with frozen BatchNorm folded into the convolutions."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoBackbone
from transformers.models.resnet.modeling_resnet import (
    ResNetBasicLayer,
    ResNetBottleNeckLayer,
    ResNetConvLayer,
    ResNetShortCut,
    ResNetStage,
)

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
    weight, bias = _folded_weights(conv, norm)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _folded_weights(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> tuple[Tensor, Tensor]:
    scale, shift = norm.scale_and_shift()
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return conv.weight * scale[:, None, None, None], bias


def _fused_inference_dtype(x: Tensor, conv: nn.Conv2d) -> torch.dtype | None:
    """The dtype for oneDNN's fused convolution (bias, residual sum and ReLU in one pass over the output) when it
    applies: CPU inference (no autograd) in fp32 or bf16 (also under autocast); None otherwise."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or not torch.backends.mkldnn.is_available():
        return None
    if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return dtype
    return None


def _conv_bn_act(
    layer: nn.Module, x: Tensor, activation: nn.Module, residual: Tensor | None = None, overwrite: bool = False
) -> Tensor:
    """`activation(conv(x) with its frozen BatchNorm folded in + residual)` for a transformers ResNet conv layer or
    shortcut. In CPU inference, one fused oneDNN call (under bf16 autocast, on bf16 folded weights cached until the
    weights change) that, with `overwrite`, writes into `residual`'s memory instead of a new feature map."""
    conv, norm = layer.convolution, layer.normalization
    relu = isinstance(activation, nn.ReLU)
    dtype = _fused_inference_dtype(x, conv) if relu or isinstance(activation, nn.Identity) else None
    if dtype is None:
        out = _folded_conv(conv, norm, x)
        if residual is not None:
            out += residual
        return activation(out)
    if dtype == conv.weight.dtype:  # folded on the fly: a cached copy would raise peak memory by the whole backbone
        weight, bias = _folded_weights(conv, norm)
    else:  # the folded low-precision copy (half the size) is cached until the weights change
        key = (dtype, *((t.data_ptr(), t._version) for t in (conv.weight, *norm.buffers())))
        cache = getattr(layer, "_inference_weights", None)
        if cache is None or cache[0] != key:
            weight, bias = _folded_weights(conv, norm)
            cache = layer._inference_weights = (key, weight.to(dtype).contiguous(), bias.to(dtype))
        _, weight, bias = cache
    options = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(dtype), weight, bias, *options, "relu" if relu else "none", [], ""
        )
    unary = "relu" if relu else None
    if overwrite and residual.dtype == dtype and residual.is_contiguous(memory_format=torch.channels_last):
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            residual, x.to(dtype), weight, bias, *options, "add", 1.0, unary, [], ""
        )
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x.to(dtype), residual.to(dtype), weight, bias, *options, "add", None, unary, [], ""
    )


class _FoldedResNetConvLayer(ResNetConvLayer):
    def forward(self, hidden_states: Tensor) -> Tensor:
        return _conv_bn_act(self, hidden_states, self.activation)


class _FoldedResNetShortCut(ResNetShortCut):
    def forward(self, hidden_states: Tensor) -> Tensor:
        return _conv_bn_act(self, hidden_states, _IDENTITY)


_IDENTITY = nn.Identity()


def _residual_block_forward(self: nn.Module, hidden_state: Tensor) -> Tensor:
    """A ResNet block whose last convolution takes the residual sum and the block's ReLU (fused in inference).

    In inference the sum is written over the residual when nothing else can hold it: a shortcut convolution's output,
    or the block's input where the previous block of the same stage made it. Every full-size feature map not
    allocated saves its page faults, a large share of CPU inference time at 800x1066."""
    residual = self.shortcut(hidden_state)
    overwrite = residual is not hidden_state or getattr(self, "_input_is_private", False)
    *layers, last = self.layer
    for layer in layers:
        hidden_state = layer(hidden_state)
    return _conv_bn_act(last, hidden_state, self.activation, residual, overwrite)


class _FoldedResNetBasicLayer(ResNetBasicLayer):
    forward = _residual_block_forward


class _FoldedResNetBottleNeckLayer(ResNetBottleNeckLayer):
    forward = _residual_block_forward


_FOLDED_CLASSES = {
    ResNetConvLayer: _FoldedResNetConvLayer,
    ResNetShortCut: _FoldedResNetShortCut,
    ResNetBasicLayer: _FoldedResNetBasicLayer,
    ResNetBottleNeckLayer: _FoldedResNetBottleNeckLayer,
}


def freeze_batch_norm(module: nn.Module) -> None:
    """Replaces every BatchNorm2d below `module` by a FrozenBatchNorm2d with the same statistics, and folds it into
    the preceding convolution where the layer is a transformers ResNet conv layer; ResNet blocks fuse their residual
    sum and ReLU into their last convolution in inference (parameter names are unchanged)."""
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
    if type(module) in _FOLDED_CLASSES:
        module.__class__ = _FOLDED_CLASSES[type(module)]
    if isinstance(module, ResNetStage):  # a block's input is its own unless the stage's input (maybe a feature map)
        for block in module.layers[1:]:
            block._input_is_private = True


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
        if config.freeze_backbone_batch_norms:
            with torch.no_grad():
                freeze_batch_norm(self.model)
        _relu_in_place(self.model)
        self.channels = self.model.channels
        self.freeze_stages(config.frozen_backbone_stages)

    def train(self, mode: bool = True) -> DetrConvEncoder:
        if mode:  # the folded weights cached for inference would only hold memory while training changes the weights
            for module in self.modules():
                module.__dict__.pop("_inference_weights", None)
        return super().train(mode)

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
