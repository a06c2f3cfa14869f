"""The run's output folder: refused when it holds an earlier run (unless resuming or asked), then made ready."""

from __future__ import annotations

import shutil
from pathlib import Path

from .checkpoints import LATEST_CHECKPOINT, write_text_atomically
from .config import TrainingConfig


def check_output_dir(config: TrainingConfig, output_dir: Path) -> None:
    """A new run refuses a folder that already holds something: its checkpoints would mix with an earlier run's."""
    if config.resume_from_checkpoint or config.overwrite_output_dir:
        return
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(
            f"output_dir {output_dir} is not empty (an earlier run?). Resume it with --resume_from_checkpoint latest, "
            "train a new run there anyway with --overwrite_output_dir true, or choose another output_dir."
        )


def prepare_output_dir(config: TrainingConfig, output_dir: Path) -> None:
    """Main process: creates the folder, removes what killed saves left (`*.partial`), writes the resolved config."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for leftover in [*output_dir.glob("*.partial"), *(output_dir / "checkpoints").glob("*.partial")]:
        shutil.rmtree(leftover, ignore_errors=True)
    config.save(output_dir / "resolved_config.yaml")
    if not config.resume_from_checkpoint and (output_dir / "checkpoints").is_dir():
        write_text_atomically(output_dir / LATEST_CHECKPOINT, "")  # an earlier run's checkpoints are not "latest"
