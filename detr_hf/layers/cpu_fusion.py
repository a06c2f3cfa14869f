"""CPU inference fusion of a frozen-BatchNorm ResNet: one oneDNN call per convolution, with its BatchNorm, residual
sum and ReLU folded in.

`fuse_for_cpu_inference(backbone)` is the one step that turns it on (RT-DETR calls such a step `deploy()`); the backbone
applies it by default whenever its BatchNorm is frozen (`DetrConfig.freeze_backbone_batch_norms`). It changes no
parameter and no parameter name, only the forward of the transformers ResNet layers:
- always: a convolution and its frozen BatchNorm run as one convolution (saves a pass over every feature map);
- in CPU inference (no autograd, fp32 or bf16, also under autocast): each convolution is one fused oneDNN call that
  also adds the residual and applies the ReLU, written over the residual's memory where nothing else can hold it.
Every full-size feature map not allocated saves its page faults, a large share of CPU inference time at 800x1066.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.resnet.modeling_resnet import (
    ResNetBasicLayer,
    ResNetBottleNeckLayer,
    ResNetConvLayer,
    ResNetShortCut,
    ResNetStage,
)

from .frozen_batch_norm import FrozenBatchNorm2d
from .tracing import is_exporting


def _folded_weights(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> tuple[Tensor, Tensor]:
    scale, shift = norm.scale_and_shift()
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return conv.weight * scale[:, None, None, None], bias


def _folded_conv(conv: nn.Conv2d, norm: FrozenBatchNorm2d, x: Tensor) -> Tensor:
    """conv followed by a frozen BatchNorm, as one convolution."""
    weight, bias = _folded_weights(conv, norm)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _fused_inference_dtype(x: Tensor, conv: nn.Conv2d) -> torch.dtype | None:
    """The dtype for oneDNN's fused convolution (bias, residual sum and ReLU in one pass over the output) when it
    applies: CPU inference (no autograd) in fp32 or bf16 (also under autocast); None otherwise."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or not torch.backends.mkldnn.is_available():
        return None
    if is_exporting():  # ONNX has no oneDNN op: export the plain graph
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


class _DropsInferenceCacheInTraining(nn.Module):
    def train(self, mode: bool = True) -> nn.Module:
        if mode:  # the folded weights cached for inference would only hold memory while training changes the weights
            self.__dict__.pop("_inference_weights", None)
        return super().train(mode)


class _FusedResNetConvLayer(_DropsInferenceCacheInTraining, ResNetConvLayer):
    def forward(self, hidden_states: Tensor) -> Tensor:
        return _conv_bn_act(self, hidden_states, self.activation)


class _FusedResNetShortCut(_DropsInferenceCacheInTraining, ResNetShortCut):
    def forward(self, hidden_states: Tensor) -> Tensor:
        return _conv_bn_act(self, hidden_states, _IDENTITY)


_IDENTITY = nn.Identity()


def _residual_block_forward(self: nn.Module, hidden_state: Tensor) -> Tensor:
    """A ResNet block whose last convolution takes the residual sum and the block's ReLU (fused in inference).

    In inference the sum is written over the residual when nothing else can hold it: a shortcut convolution's output,
    or the block's input where the previous block of the same stage made it."""
    residual = self.shortcut(hidden_state)
    overwrite = residual is not hidden_state or getattr(self, "_input_is_private", False)
    *layers, last = self.layer
    for layer in layers:
        hidden_state = layer(hidden_state)
    return _conv_bn_act(last, hidden_state, self.activation, residual, overwrite)


class _FusedResNetBasicLayer(ResNetBasicLayer):
    forward = _residual_block_forward


class _FusedResNetBottleNeckLayer(ResNetBottleNeckLayer):
    forward = _residual_block_forward


_FUSED_CLASSES = {
    ResNetConvLayer: _FusedResNetConvLayer,
    ResNetShortCut: _FusedResNetShortCut,
    ResNetBasicLayer: _FusedResNetBasicLayer,
    ResNetBottleNeckLayer: _FusedResNetBottleNeckLayer,
}


def fuse_for_cpu_inference(module: nn.Module) -> nn.Module:
    """Switches every transformers ResNet conv layer, shortcut and block below `module` to the fused forward (see the
    module docstring), in place, and returns `module`. Its BatchNorm must be frozen first (`freeze_batch_norm`);
    other backbones pass unchanged."""
    if any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        raise ValueError("fuse_for_cpu_inference folds frozen BatchNorm only: call freeze_batch_norm first.")
    for child in module.modules():
        if type(child) in _FUSED_CLASSES:
            child.__class__ = _FUSED_CLASSES[type(child)]
        if isinstance(child, ResNetStage):  # a block's input is its own unless the stage's input (maybe a feature map)
            for block in child.layers[1:]:
                block._input_is_private = True
    return module


__all__ = ["fuse_for_cpu_inference"]
