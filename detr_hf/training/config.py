"""The recipe's options: `TrainingConfig`, read from a YAML file and `--key value` overrides, and checked."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainingConfig:
    """Every option of `recipes/finetune.py`. YAML files set them, `--key value` overrides them; unknown keys fail."""

    # model: a checkpoint (Hub id or folder, detr_hf or transformers DETR), or a preset trained from scratch
    model: str | None = None
    # "detr" | "dino_like" | a transformers model type ("rt_detr_v2", "d_fine"...: docs/families.md), random init
    model_preset: str = "detr"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # config fields, e.g. {num_queries: 300}
    class_head: str = (
        "auto"  # "auto": keep the checkpoint's rows for classes it knows by name, else new; "reuse"; "new"
    )
    # data: "synthetic", anything `load_detection_dataset` takes, or a Hub dataset name
    dataset: str = "synthetic"
    dataset_format: str = "auto"
    synthetic: dict[str, Any] = field(default_factory=dict)  # make_synthetic_dataset arguments
    train_split: str = "train"
    eval_split: str = "validation"
    val_fraction: float = 0.1
    split_seed: int = 0  # picks the images of a validation split made by val_fraction (independent of `seed`)
    # keep groups whole in that split: a regex whose first capture group in file_name names the group (patient,
    # recording, scene), e.g. "^([^/]+)/" for the first folder, or a column of a saved/Hub dataset
    group_by: str | None = None
    augmentation: str = "train"  # "train" | "aerial" | "medical" | "none"
    scales: list[int] = field(default_factory=lambda: [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800])
    max_size: int = 1333
    # train on native-resolution tiles and evaluate full images by sliced inference (docs/large_images.md):
    # {tile_size: 512, overlap: 0.2, min_visibility: 0.3, empty_fraction: 0.1}; null: whole images
    tiling: dict[str, Any] | None = None
    # optimization
    output_dir: str = "runs/detr"  # must be empty (or absent) unless resuming or overwrite_output_dir
    # train a new run in a non-empty output_dir: its outputs are replaced; an earlier run's checkpoints stay, but
    # are neither rotated away nor resumed by "latest"
    overwrite_output_dir: bool = False
    seed: int = 0
    num_epochs: int = 50
    max_steps: int | None = None
    max_train_minutes: float | None = None
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    backbone_learning_rate: float = 1e-5
    weight_decay: float = 1e-4
    lr_scheduler: str = "step"  # "step" | "cosine" | "constant"
    lr_drop_fraction: float = 0.67  # step: when to divide the learning rate by 10, as a fraction of training
    warmup_steps: int = 0
    warmup_epochs: float = 0.0  # warm-up in epochs of the dataset (used when warmup_steps is 0)
    # overfit one training batch for this many steps (true: 50) before the run; stop if the loss can't go down
    sanity_check: int | bool = False
    max_grad_norm: float = 0.1  # 0 or null: no clipping (the norm is still checked: a non-finite one skips the step)
    # a step whose loss or gradient norm is not finite (on any process) is skipped; this many in a row abort the run
    # with an error instead of saving a broken model (null: never abort)
    max_consecutive_skipped_steps: int | None = 20
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    ema_decay: float | None = None  # e.g. 0.9998; None disables EMA
    num_workers: int = 0
    cpu: bool = False  # force CPU (also for multi-process CPU runs started with `accelerate launch --multi_gpu`)
    # evaluation and checkpoints
    eval_every_epochs: int = 1
    eval_every_minutes: float | None = None
    metric_for_best_model: str = "map"
    early_stopping_patience: int | None = None
    checkpoint_every_steps: int | None = None
    save_total_limit: int | None = 2  # newest step checkpoints of this run kept; 0: none saved; null: all kept
    resume_from_checkpoint: str | None = None  # "latest" or a folder
    logging_steps: int = 10
    # at the end: per-class thresholds (saved for threshold="auto"), calibration, intervals, error gallery in report/
    operating_point_report: bool = True
    report_to: list[str] = field(default_factory=list)  # Accelerate trackers: "tensorboard", "trackio", "wandb"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def load_training_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainingConfig:
    """Reads a YAML config, applies `--key value` overrides (values parsed as YAML), and rejects unknown keys."""
    values: dict[str, Any] = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of options, got {type(values).__name__}")
    values.update(parse_overrides(overrides or []))
    known = set(TrainingConfig.keys())
    unknown = sorted(set(values) - known)
    if unknown:
        hints = [f"{key!r} (did you mean {_closest(key, known)!r}?)" for key in unknown]
        where = f" in {path}" if path else ""
        raise ValueError(f"Unknown option(s){where}: {', '.join(hints)}. Known options: {', '.join(sorted(known))}")
    return TrainingConfig(**values)


def parse_overrides(arguments: list[str]) -> dict[str, Any]:
    """`["--lr", "3e-4", "--push_to_hub"]` -> `{"lr": 3e-4, "push_to_hub": True}`; dashes in names become underscores."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(arguments):
        argument = arguments[i]
        if not argument.startswith("--"):
            raise ValueError(f"Expected an option like --key value, got {argument!r}")
        key, _, value = argument[2:].partition("=")
        key = key.replace("-", "_")
        if not value:
            if i + 1 < len(arguments) and not arguments[i + 1].startswith("--"):
                value = arguments[i + 1]
                i += 1
            else:
                value = "true"
        values[key] = yaml.safe_load(value)
        i += 1
    return values


def _closest(key: str, known: set[str]) -> str:
    import difflib

    return (difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.0) or [""])[0]


def parse_recipe_arguments(argv: list[str] | None = None, default_config: str | Path | None = None) -> TrainingConfig:
    """`--config FILE` (else `default_config`, when no option at all is given) plus `--key value` overrides."""
    parser = argparse.ArgumentParser(description="Fine-tune a DETR detector", add_help=True)
    parser.add_argument("--config", help="a YAML file of options (see detr_hf.training.TrainingConfig)")
    known, rest = parser.parse_known_args(argv)
    if known.config is None and not rest:
        known.config = default_config
    return load_training_config(known.config, rest)


def check_config(config: TrainingConfig) -> None:
    """Rejects the option values no run can use, before any work: counts that must not be negative."""
    from .tiling import check_tiling

    check_tiling(config.tiling)
    if config.save_total_limit is not None and config.save_total_limit < 0:
        raise ValueError(f"save_total_limit={config.save_total_limit}: use a count >= 0, or null to keep every one")
    if config.max_consecutive_skipped_steps is not None and config.max_consecutive_skipped_steps < 1:
        raise ValueError(
            f"max_consecutive_skipped_steps={config.max_consecutive_skipped_steps}: use a count >= 1, or null to "
            "never abort"
        )
