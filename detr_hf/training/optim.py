"""The optimizer and learning-rate schedule of a run, counted in optimizer steps."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .config import TrainingConfig

LR_SCHEDULERS = ("step", "cosine", "constant")


def parameter_groups(model: nn.Module, config: TrainingConfig) -> list[dict[str, Any]]:
    """AdamW groups: the backbone at its own learning rate; no weight decay on norms, biases and embeddings."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_backbone = ".backbone." in f".{name}"
        no_decay = parameter.ndim <= 1 or "embedding" in name or "norm" in name
        groups.setdefault((is_backbone, no_decay), []).append(parameter)
    return [
        {
            "params": params,
            "lr": config.backbone_learning_rate if is_backbone else config.learning_rate,
            "weight_decay": 0.0 if no_decay else config.weight_decay,
            "name": ("backbone" if is_backbone else "transformer") + ("_no_decay" if no_decay else ""),
        }
        for (is_backbone, no_decay), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`parameter_groups`."""
    return torch.optim.AdamW(parameter_groups(model, config), lr=config.learning_rate, foreach=True)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig, total_steps: int, steps_per_epoch: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up (`warmup_steps`, else `warmup_epochs` x `steps_per_epoch`), then DETR's single step decay
    (x0.1), cosine decay, or constant; counted in optimizer steps.

    Step it once per optimizer step yourself: `accelerator.prepare` would wrap it to step once per process at every
    optimizer step, which squeezes the schedule N-fold on N processes."""
    if config.lr_scheduler not in LR_SCHEDULERS:  # now, not when the warm-up ends
        raise ValueError(f"lr_scheduler={config.lr_scheduler!r}: use 'step', 'cosine' or 'constant'")

    warmup = config.warmup_steps or round(config.warmup_epochs * (steps_per_epoch or 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.lr_scheduler == "step":
            return 0.1 if step >= config.lr_drop_fraction * total_steps else 1.0
        if config.lr_scheduler == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0  # constant

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
