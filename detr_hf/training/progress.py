"""What a run tells its user as it goes and when it ends: a progress bar over the real budget, the mean loss of the
last steps, a plain warning when the safety time limit cuts a step budget short, and where the results are."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .checkpoints import TrainState
from .config import TrainingConfig

FINAL_LOSS_STEPS = 20  # train_results.json's final_loss: the mean loss of this many last optimizer steps


class TrainProgress:
    """The training bar. With a step budget (`max_steps`, or the epochs) it counts optimizer steps to that budget
    and shows steps/s; with only a time budget (`max_train_minutes` without `max_steps`) it counts the minutes of
    training, with steps and steps/s beside. Loss and learning rate come from `set_postfix` (see `log_step`)."""

    def __init__(self, config: TrainingConfig, total_steps: int, state: TrainState, enabled: bool):
        self.by_time = bool(config.max_train_minutes) and not config.max_steps
        self.steps, self.started, self.first_step = state.global_step, time.perf_counter(), state.global_step
        self.postfix: dict[str, Any] = {}
        if self.by_time:
            total = 60 * config.max_train_minutes
            bar = "{desc}: {percentage:3.0f}%|{bar}| {elapsed} of " + _minutes(total) + " budget{postfix}"
            self.bar = tqdm(total=total, initial=min(state.train_seconds, total), desc="training", bar_format=bar,
                            disable=not enabled)  # fmt: skip
        else:
            self.bar = tqdm(total=total_steps, initial=state.global_step, desc="training", unit="step",
                            disable=not enabled)  # fmt: skip

    def update(self, state: TrainState) -> None:
        """After each optimizer step (`state.train_seconds` up to date)."""
        self.steps = state.global_step
        if self.by_time:
            self.bar.n = min(state.train_seconds, self.bar.total)
            rate = (self.steps - self.first_step) / max(1e-9, time.perf_counter() - self.started)
            self.bar.set_postfix({"step": self.steps, **self.postfix, "steps/s": f"{rate:.2f}"})
        else:
            self.bar.update(1)

    def set_postfix(self, **values: Any) -> None:
        self.postfix.update(values)
        if not self.by_time:
            self.bar.set_postfix(self.postfix)

    def close(self) -> None:
        self.bar.close()


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


class RecentLosses:
    """The losses of the last `FINAL_LOSS_STEPS` optimizer steps, kept as tensors (no device sync per step)."""

    def __init__(self, size: int = FINAL_LOSS_STEPS):
        self.values: deque[torch.Tensor] = deque(maxlen=size)

    def append(self, loss: torch.Tensor) -> None:
        self.values.append(loss.detach().float())

    def mean(self, accelerator: Accelerator) -> float | None:
        """Their mean, averaged over processes (every process must call it); None before any step."""
        if not self.values:
            return None
        local = torch.stack(list(self.values)).mean()
        return accelerator.reduce(local, "mean").item()


def stopped_by_time_limit(config: TrainingConfig, state: TrainState, total_steps: int) -> bool:
    """Whether the safety stop (`max_train_minutes`) ended a run that had a step budget before the budget."""
    return bool(config.max_steps and config.max_train_minutes) and state.global_step < total_steps


def time_limit_message(config: TrainingConfig, state: TrainState, total_steps: int) -> str:
    """The warning printed when the safety stop ends a step budget early: what happened, why, and what to do."""
    per_step = state.train_seconds / max(1, state.global_step)
    return (
        f"STOPPED EARLY by the safety time limit (max_train_minutes={config.max_train_minutes:g}) after "
        f"{state.global_step} of {total_steps} optimizer steps ({per_step:.2f} s a step on this machine). The model "
        f"trained {state.global_step / total_steps:.0%} of its budget, so its metrics are below what the full "
        f"{total_steps} steps reach (for the quickstart: below the README's AP50). The machine was slower than "
        "the limit allows for (a slow or busy CPU, or fewer threads); to get the full result, run again on a quieter "
        f"machine or raise the limit, e.g. --max_train_minutes {2 * config.max_train_minutes:g}."
    )


def results_summary(output_dir: Path, metrics: dict[str, Any] | None, train_results: dict[str, Any]) -> str:
    """The lines printed at the end of a run: what was measured and where every output is."""
    lines = [f"\nDone: {train_results.get('steps')} optimizer steps in {train_results.get('train_seconds', 0) / 60:.1f}"
             " minutes."]  # fmt: skip
    if metrics:
        lines.append(f"Validation: mAP {metrics.get('map', -1):.3f}, AP50 {metrics.get('map_50', -1):.3f}.")
    if train_results.get("stopped_by_time_limit"):
        lines.append(
            "The safety time limit ended the run before its step budget: the metrics are below the full run's."
        )
    lines += [
        f"Results in {output_dir}/:",
        "  model.safetensors, config.json, preprocessor_config.json  the model (transformers' pipeline loads the folder)",
        "  README.md             the model card: metrics, loss/mAP curves, validation images with predictions",
        "  eval_results.json     COCO metrics;  predictions.json: the validation detections (COCO results)",
        "  train_results.json    steps, time, final_loss;  train_log.jsonl: every step's learning rate, loss",
        "  loss_curve.png        training loss and validation mAP/AP50 over the steps",
    ]
    return "\n".join(lines)


__all__ = [
    "FINAL_LOSS_STEPS",
    "RecentLosses",
    "TrainProgress",
    "results_summary",
    "stopped_by_time_limit",
    "time_limit_message",
]
