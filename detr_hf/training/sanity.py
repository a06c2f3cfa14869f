"""The "overfit one batch" check (``--sanity_check``): a copy of the model trains on one batch for a few steps before
the run, and the run stops at once, saying what to look at, when the loss can't go down."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainingConfig
from .optim import build_optimizer

DEFAULT_STEPS = 50
REQUIRED_DROP = 0.1  # the last losses must be at least this much below the first ones


def overfit_one_batch(
    model: nn.Module, batch: dict[str, Any], config: TrainingConfig, steps: int = DEFAULT_STEPS
) -> list[float]:
    """The loss of each of ``steps`` AdamW steps on one ``batch`` (the run's optimizer groups and learning rates),
    taken by a copy of ``model``: the model itself and the random state are left as they were. Every step draws the
    same random numbers (dropout, denoising noise), so the losses are of one fixed batch and problem."""
    trial = copy.deepcopy(model).train()
    optimizer = build_optimizer(trial, config)
    losses = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(steps):
            torch.manual_seed(0)
            loss = trial(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            if config.max_grad_norm:
                nn.utils.clip_grad_norm_(trial.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    return losses


def loss_drop(losses: list[float], window: int = 5) -> float:
    """How much lower the mean of the last ``window`` losses is than the first loss, as a fraction of it."""
    tail = losses[-window:]
    return 1 - (sum(tail) / len(tail)) / losses[0]


def batch_problems(model: nn.Module, batch: dict[str, Any]) -> list[str]:
    """What in the batch or the model would stop the loss from going down: labels outside the class head, boxes
    that are not normalized (cx, cy, w, h), a frozen class head."""
    problems = []
    num_labels = model.config.num_labels
    for target in batch["labels"]:
        labels, boxes = target["class_labels"], target["boxes"]
        if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
            problems.append(f"class labels {labels.tolist()} outside the model's {num_labels} classes")
        if len(boxes) and (boxes.min() < 0 or boxes.max() > 1 or (boxes[:, 2:] <= 0).any()):
            problems.append("boxes that are not normalized (center x, center y, width, height) in 0..1")
    heads = [p for name, p in model.named_parameters() if "class" in name or "score" in name]
    if heads and not any(p.requires_grad for p in heads):
        problems.append("a frozen class head (no class parameter requires a gradient)")
    if not any(p.requires_grad for p in model.parameters()):
        problems.append("no trainable parameter at all")
    if not any(len(t["class_labels"]) for t in batch["labels"]):
        problems.append("a batch without any object")
    return sorted(set(problems))


def sanity_check(model: nn.Module, batch: dict[str, Any], config: TrainingConfig, output_dir: Path | None) -> dict:
    """Overfits one batch for ``config.sanity_check`` steps (True: 50); writes ``sanity_check.json`` to
    ``output_dir``; raises with what to look at when the loss did not drop by :data:`REQUIRED_DROP`."""
    steps = DEFAULT_STEPS if config.sanity_check is True else int(config.sanity_check)
    problems = batch_problems(model, batch)
    # a batch the loss can't even be computed on (labels outside the head) is reported without training
    losses = [] if problems else overfit_one_batch(model, batch, config, steps)
    drop = loss_drop(losses) if losses else 0.0
    result = {"steps": steps, "losses": losses, "drop": drop, "problems": problems}
    if output_dir is not None:
        (Path(output_dir) / "sanity_check.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    if problems:
        raise RuntimeError(f"sanity check failed before training on the first batch: {'; '.join(problems)}.")
    if drop < REQUIRED_DROP:
        raise RuntimeError(
            f"sanity check failed: overfitting one batch of {len(batch['labels'])} images, the loss went from "
            f"{losses[0]:.3f} to {losses[-1]:.3f} in {steps} steps (a drop of {drop:.0%}, {REQUIRED_DROP:.0%} "
            "needed). Check the labels (class ids, box format), the class count, frozen parameters, and the learning "
            f"rate (learning_rate={config.learning_rate})."
        )
    return result


def sanity_check_run(
    config: TrainingConfig, model: nn.Module, processor: Any, train_split: Any, output_dir: Any
) -> dict:
    """:func:`sanity_check` on the run's first training batch (augmented as the run will be)."""
    from .data import train_dataloader

    loader, _ = train_dataloader(train_split, processor, config)
    return sanity_check(model, next(iter(loader)), config, output_dir)
