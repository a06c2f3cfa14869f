"""Everything the fine-tuning recipe (`recipes/finetune.py`) uses that is not its loop, for reuse and tests.

- ``config``: :class:`TrainingConfig`, read from YAML and ``--key value`` overrides, and checked;
- ``models``: the run's model (a preset, or a checkpoint with its class head mapped by name) and image processor;
- ``data``: the training loader, with augmentations seeded by data position (resumes replay them);
- ``optim``: parameter groups, AdamW and the learning-rate schedule; ``ema``: the weights' moving average;
- ``step``: one optimizer step, skipped on every process when its loss or gradient norm is not finite;
- ``distributed``: processes that agree on flags and fail together;
- ``checkpoints``: :class:`TrainState`, rotated step checkpoints and atomic saves; ``output_dir``: the folder guards;
- ``train_log``: ``train_log.jsonl``, tracker logging and the loss curve; ``model_card``: the Hub README (sections);
- ``progress``: the bar over the real budget, the final loss, the safety time limit's warning, the closing summary.
"""

from .checkpoints import (
    LATEST_CHECKPOINT,
    TrainState,
    find_checkpoint,
    replace_folder,
    save_checkpoint,
    save_model_atomically,
    write_text_atomically,
)
from .config import TrainingConfig, check_config, load_training_config, parse_overrides, parse_recipe_arguments
from .data import SeededTransform, train_dataloader
from .distributed import any_process, on_all_processes
from .ema import ModelEma
from .model_card import write_model_card
from .models import build_detector, match_class_names, preset_config
from .optim import build_optimizer, build_scheduler, parameter_groups
from .output_dir import check_output_dir, prepare_output_dir
from .sanity import overfit_one_batch, sanity_check, sanity_check_run
from .step import StepResult, skip_step, train_step
from .train_log import TrainLog, log_step, plot_history

__all__ = [
    "LATEST_CHECKPOINT",
    "ModelEma",
    "SeededTransform",
    "StepResult",
    "TrainLog",
    "TrainState",
    "TrainingConfig",
    "any_process",
    "build_detector",
    "build_optimizer",
    "build_scheduler",
    "check_config",
    "check_output_dir",
    "find_checkpoint",
    "load_training_config",
    "log_step",
    "match_class_names",
    "on_all_processes",
    "overfit_one_batch",
    "parameter_groups",
    "parse_overrides",
    "parse_recipe_arguments",
    "plot_history",
    "prepare_output_dir",
    "preset_config",
    "replace_folder",
    "sanity_check",
    "sanity_check_run",
    "save_checkpoint",
    "save_model_atomically",
    "skip_step",
    "train_dataloader",
    "train_step",
    "write_model_card",
    "write_text_atomically",
]
