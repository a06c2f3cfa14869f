"""What a run saves as it goes: step checkpoints (rotated, resumable) and the best model, each written under a
temporary name and renamed when complete, so that a killed run never leaves a half-written one behind."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from .distributed import on_all_processes

LATEST_CHECKPOINT = "latest_checkpoint.txt"  # in output_dir: the name of the run's newest complete checkpoint


class TrainState:
    """What a checkpoint must remember beyond model, optimizer, scheduler and RNGs: where the run is in the data."""

    def __init__(self) -> None:
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.train_seconds, self.best_metric, self.evals_without_improvement = 0.0, -math.inf, 0
        self.skipped_steps, self.consecutive_skipped_steps = 0, 0
        self.loss_history, self.eval_history = [], []
        self.checkpoints: list[str] = []  # this run's step checkpoints, oldest first: the only ones rotation deletes

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: TrainState, limit: int | None) -> None:
    """Accelerate state saved under a temporary name and renamed when complete, so a kill never leaves a half one.
    Keeps the newest `limit` checkpoints of this run (all if None); another run's are never deleted."""
    name = f"step-{state.global_step:08d}"
    folder = output_dir / "checkpoints" / name
    partial = folder.with_name(name + ".partial")
    previous = [n for n in state.checkpoints if n != name]
    dropped = previous[: max(0, len(previous) + 1 - limit)] if limit is not None else []
    state.checkpoints = [n for n in previous if n not in dropped] + [name]  # saved with the state: resumes keep it
    on_all_processes(accelerator, f"saving checkpoint {partial}", lambda: accelerator.save_state(str(partial)))

    def publish() -> None:
        if not accelerator.is_main_process:
            return
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
        write_text_atomically(output_dir / LATEST_CHECKPOINT, name)
        for old in dropped:
            shutil.rmtree(folder.with_name(old), ignore_errors=True)

    on_all_processes(accelerator, f"publishing checkpoint {folder}", publish)


def find_checkpoint(spec: str, output_dir: Path) -> Path:
    """A checkpoint folder, or for "latest" the newest complete one this output_dir's run saved."""
    if spec != "latest":
        if not Path(spec).is_dir():
            raise FileNotFoundError(f"resume_from_checkpoint={spec!r} is not a folder")
        return Path(spec)
    pointer = output_dir / LATEST_CHECKPOINT
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if not name:
            raise FileNotFoundError(
                f"resume_from_checkpoint='latest' but the last run in {output_dir} saved no checkpoint (the ones in "
                f"{output_dir}/checkpoints are an earlier run's: name one to resume it)"
            )
        if (output_dir / "checkpoints" / name).is_dir():
            return output_dir / "checkpoints" / name
    # no pointer (a run of an earlier version, or killed before it was written): the highest step
    done = sorted(p for p in (output_dir / "checkpoints").glob("step-*") if not p.name.endswith(".partial"))
    if not done:
        raise FileNotFoundError(f"resume_from_checkpoint='latest' but {output_dir}/checkpoints has no checkpoint")
    return done[-1]


def save_model_atomically(accelerator: Accelerator, model: Any, processor: Any, folder: Path) -> None:
    """Writes the model and processor to a temporary folder, then renames it to `folder`: never half written."""
    partial = folder.with_name(folder.name + ".partial")

    def write() -> None:
        # every process calls save_pretrained (transformers may gather across them); only the main one writes
        model.save_pretrained(partial, is_main_process=accelerator.is_main_process)
        if accelerator.is_main_process:
            processor.save_pretrained(partial)

    def publish() -> None:
        if accelerator.is_main_process:
            replace_folder(partial, folder)

    on_all_processes(accelerator, f"saving {partial}", write)
    on_all_processes(accelerator, f"renaming {partial}", publish)  # after every process left save_pretrained


def write_text_atomically(path: Path, text: str) -> None:
    """Writes `path` through a temporary file and a rename: readers see the old text or the new, never a part."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def replace_folder(new: Path, target: Path) -> None:
    """Moves the complete folder `new` to `target` by renames, so that `target` is never half written."""
    old = target.with_name(target.name + ".previous.partial")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
