"""What a run logs: `train_log.jsonl` (every optimizer step), the trackers and progress bar, and the loss curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from tqdm.auto import tqdm

from .checkpoints import TrainState
from .config import TrainingConfig
from .step import StepResult


class TrainLog:
    """`train_log.jsonl`: one line per optimizer step (learning rates, gradient norm, and the loss every
    `logging_steps`), written by the main process. A resumed run first drops the lines past its checkpoint."""

    def __init__(self, path: Path, resumed_step: int, enabled: bool):
        self.file = None
        if not enabled:
            return
        kept = []
        if resumed_step and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= resumed_step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):  # the half-written last line of a killed run
                    continue
        path.write_text("".join(kept), encoding="utf-8")
        self.file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def log_step(
    config: TrainingConfig,
    accelerator: Accelerator,
    state: TrainState,
    step: StepResult,
    train_log: TrainLog,
    progress: tqdm,
) -> None:
    """Every step: learning rates and gradient norm to train_log.jsonl; every `logging_steps`: the loss too, averaged
    over processes, to the trackers and the progress bar."""
    record: dict[str, Any] = {"step": state.global_step, "lr": step.learning_rates, "grad_norm": step.grad_norm}
    if state.global_step % config.logging_steps == 0 or state.global_step == 1:
        value = accelerator.reduce(step.outputs.loss.detach(), "mean").item()
        state.loss_history.append((state.global_step, value))
        lr = step.learning_rates.get("transformer", next(iter(step.learning_rates.values())))
        progress.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.1e}")
        terms = {
            k: accelerator.reduce(v.detach(), "mean").item()
            for k, v in step.outputs.loss_dict.items()
            if "_" in k and not k[-1].isdigit()
        }
        record.update(loss=value, **terms)
        accelerator.log(
            {"train/loss": value, "train/lr": lr, **{f"train/{k}": v for k, v in terms.items()}}, step=state.global_step
        )
    train_log.write(record)


def plot_history(state: TrainState, path: Path) -> None:
    """`loss_curve.png`: the logged training loss and the validation mAP/AP50, both over optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, map_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if state.loss_history:
        steps, losses = zip(*state.loss_history)
        loss_axis.plot(steps, losses, lw=1)
    loss_axis.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    loss_axis.set_yscale("log")
    if state.eval_history:
        steps, maps, map50s = zip(*state.eval_history)
        map_axis.plot(steps, maps, "o-", label="mAP")
        map_axis.plot(steps, map50s, "s-", label="AP50")
        map_axis.legend()
    map_axis.set(title="validation", xlabel="optimizer step", ylim=(0, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
