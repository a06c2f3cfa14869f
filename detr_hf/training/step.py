"""One optimizer step, guarded: a step whose loss or gradient norm is not finite on any process is skipped by every
process, and too many skipped in a row abort the run instead of saving a broken model."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from .checkpoints import TrainState
from .config import TrainingConfig
from .distributed import any_process

logger = get_logger(__name__)


class StepResult(NamedTuple):
    """What one optimizer step leaves to log."""

    outputs: Any
    learning_rates: dict[str, float]  # per parameter group kind ("transformer", "backbone"), as used by this step
    grad_norm: float | None  # before clipping


def train_step(
    config: TrainingConfig,
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: dict[str, Any],
    state: TrainState,
) -> StepResult | None:
    """One batch: forward and backward, and at the end of a gradient accumulation the optimizer and scheduler step.
    None while accumulating, or when the step is skipped for a non-finite loss or gradient norm."""
    with accelerator.accumulate(model):
        outputs = model(**batch)
        # every process skips together, or distributed training would hang
        if any_process(accelerator, ~torch.isfinite(outputs.loss.detach())):
            skip_step(config, optimizer, state, f"non-finite loss {outputs.loss.item()}")
            return None
        accelerator.backward(outputs.loss)
        if not accelerator.sync_gradients:
            return None
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
        # with fp16, the gradient scaler skips overflowing steps itself (and lowers its scale)
        if grad_norm is not None and accelerator.scaler is None:
            grad_norm = grad_norm.detach()
            if any_process(accelerator, ~torch.isfinite(grad_norm)):
                skip_step(config, optimizer, state, f"non-finite gradient norm {grad_norm.item()}")
                return None
        learning_rates = {group["name"].removesuffix("_no_decay"): group["lr"] for group in optimizer.param_groups}
        optimizer.step()
        if not optimizer.step_was_skipped:
            scheduler.step()
        optimizer.zero_grad()
    state.consecutive_skipped_steps = 0
    return StepResult(outputs, learning_rates, None if grad_norm is None else grad_norm.item())


def skip_step(config: TrainingConfig, optimizer: torch.optim.Optimizer, state: TrainState, reason: str) -> None:
    """Drops the step's gradients; aborts once `max_consecutive_skipped_steps` steps in a row were skipped."""
    optimizer.zero_grad()
    state.skipped_steps += 1
    state.consecutive_skipped_steps += 1
    logger.warning("step %d: %s, step skipped", state.global_step + 1, reason)
    limit = config.max_consecutive_skipped_steps
    if limit and state.consecutive_skipped_steps >= limit:
        raise RuntimeError(
            f"training diverged: {state.consecutive_skipped_steps} steps in a row were skipped (the last for a "
            f"{reason}) after {state.global_step} optimizer steps; no model was saved. Lower learning_rate, add "
            "warmup_steps, or resume from an earlier checkpoint (max_consecutive_skipped_steps sets this limit)."
        )
