"""Frozen BatchNorm: fixed statistics and affine parameters, as DETR uses for a pretrained backbone."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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


@torch.no_grad()
def freeze_batch_norm(module: nn.Module) -> None:
    """Replaces every BatchNorm2d below `module` by a FrozenBatchNorm2d with the same statistics (names unchanged)."""
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


__all__ = ["FrozenBatchNorm2d", "freeze_batch_norm"]
