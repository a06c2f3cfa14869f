"""An exponential moving average of a model's weights, evaluated and saved instead of the model when enabled."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEma(nn.Module):
    """Exponential moving average of a model's weights (and a copy of its buffers), evaluated instead of the model.

    The decay ramps up as `decay * (1 - exp(-updates / 2000))`, so early averages are not dominated by the random init.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998):
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates.item() / 2000))
        averaged = self.module.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                averaged[name].lerp_(value.detach(), 1 - decay)
            else:
                averaged[name].copy_(value)
