"""The pieces of the fine-tuning recipe that are not the loop: its config, optimizer, schedule, EMA and model card.

`recipes/finetune.py` holds the loop; everything it needs that a user may want to reuse or test lives here.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn


@dataclass
class TrainingConfig:
    """Every option of `recipes/finetune.py`. YAML files set them, `--key value` overrides them; unknown keys fail."""

    # model: a checkpoint (Hub id or folder, detr_hf or transformers DETR), or a preset trained from scratch
    model: str | None = None
    model_preset: str = "detr"  # "detr" | "dino_like" (when `model` is not given)
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
    augmentation: str = "train"  # "train" | "aerial" | "medical" | "none"
    scales: list[int] = field(default_factory=lambda: [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800])
    max_size: int = 1333
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
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_training_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainingConfig:
    """Reads a YAML config, applies `--key value` overrides (values parsed as YAML), and rejects unknown keys."""
    values: dict[str, Any] = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text()) or {}
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
    return torch.optim.AdamW(parameter_groups(model, config), lr=config.learning_rate, foreach=True)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig, total_steps: int):
    """Linear warm-up, then DETR's single step decay (x0.1), cosine decay, or constant; counted in optimizer steps.

    Step it once per optimizer step yourself: `accelerator.prepare` would wrap it to step once per process at every
    optimizer step, which squeezes the schedule N-fold on N processes."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_scheduler == "step":
            return 0.1 if step >= config.lr_drop_fraction * total_steps else 1.0
        if config.lr_scheduler == "cosine":
            progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if config.lr_scheduler == "constant":
            return 1.0
        raise ValueError(f"lr_scheduler={config.lr_scheduler!r}: use 'step', 'cosine' or 'constant'")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def write_model_card(
    output_dir: str | Path,
    config: TrainingConfig,
    metrics: dict[str, Any],
    command: str,
    id2label: dict[int, str],
    train_results: dict[str, Any],
) -> Path:
    """A README.md for the Hub: data, metrics table, per-class AP, hyper-parameters and the command that made it."""
    lines = [
        "---",
        "library_name: detr_hf",
        "pipeline_tag: object-detection",
        "tags: [object-detection, detr, detr_hf]",
        "---",
        "",
        f"# {Path(output_dir).name}",
        "",
        f"A DETR-family detector fine-tuned with detr_hf on `{config.dataset}`"
        + (
            f", starting from `{config.model}`." if config.model else f" from scratch (`{config.model_preset}` preset)."
        ),
        "",
        "## Evaluation (COCO metrics, validation split)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"):
        if key in metrics:
            lines.append(f"| {key} | {metrics[key]:.4f} |")
    per_class = metrics.get("map_per_class") or {}
    if per_class:
        lines += ["", "| class | AP |", "|---|---|"] + [f"| {name} | {ap:.4f} |" for name, ap in per_class.items()]
    lines += [
        "",
        f"Classes ({len(id2label)}): " + ", ".join(id2label[i] for i in sorted(id2label)),
        "",
        "## Training",
        "",
        f"{train_results.get('steps', '?')} optimizer steps, {train_results.get('epochs', '?')} epochs, "
        f"{train_results.get('train_seconds', 0) / 60:.1f} minutes.",
        "",
        "```",
        command,
        "```",
        "",
        "```yaml",
        yaml.safe_dump(config.to_dict(), sort_keys=False).strip(),
        "```",
        "",
        "## Usage",
        "",
        "```python",
        "import detr_hf  # registers the model with transformers' Auto classes",
        "from transformers import pipeline",
        f'detector = pipeline("object-detection", model="{config.hub_model_id or output_dir}")',
        "```",
        "",
    ]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path


def detector_class(model_type: str | None) -> type:
    """The detr_hf model class that loads checkpoints of `model_type` (ours, or transformers' DETR family)."""
    from .modeling_detr import DetrForObjectDetection

    if model_type in (None, "detr", "detr_hf"):
        return DetrForObjectDetection
    if model_type in ("deformable_detr", "detr_hf_deformable"):
        from .modeling_deformable import DeformableDetrForObjectDetection

        return DeformableDetrForObjectDetection
    raise ValueError(f"Checkpoints of model_type {model_type!r} are not supported; use a DETR or Deformable DETR one.")


def preset_config(preset: str, **overrides: Any):
    """A from-scratch model config: "detr" (DETR-R50 by default) or "dino_like" (the fast-converging combination)."""
    from .configuration_detr import DetrConfig

    if preset == "detr":
        return DetrConfig(**overrides)
    if preset == "dino_like":
        from .configuration_deformable import DeformableDetrConfig

        return DeformableDetrConfig.dino_like(**overrides)
    raise ValueError(f"model_preset={preset!r}: use 'detr' or 'dino_like'")


def match_class_names(dataset_names: list[str], checkpoint_names: dict[int, str]) -> list[int] | None:
    """For each dataset class, the checkpoint's label with the same name (case-insensitive), or None if any lacks one."""
    index = {name.strip().lower(): label for label, name in checkpoint_names.items()}
    rows = [index.get(name.strip().lower()) for name in dataset_names]
    return None if any(row is None for row in rows) else rows


def keep_class_rows(model: nn.Module, rows: list[int], class_names: list[str]) -> None:
    """Shrinks every class head to the checkpoint labels `rows` (in the dataset's order), keeping "no object"."""
    config = model.config
    old_width = config.num_classes_with_background
    keep = list(rows) + ([] if config.use_focal_loss else [old_width - 1])
    heads = model.class_embed if hasattr(model, "class_embed") else [model.class_labels_classifier]
    for module in heads:
        if module.out_features == old_width:
            module.weight = nn.Parameter(module.weight.detach()[keep].clone())
            module.bias = nn.Parameter(module.bias.detach()[keep].clone())
            module.out_features = len(keep)
    labels = getattr(getattr(model, "model", None), "denoising_label_embed", None)
    if labels is not None:  # DINO's denoising label embedding: a row per class, then the padding row
        labels.weight = nn.Parameter(labels.weight.detach()[[*rows, config.num_labels]].clone())
        labels.num_embeddings = len(rows) + 1
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: i for i, name in enumerate(class_names)}
    if hasattr(model, "criterion"):
        model.criterion.num_classes = len(class_names)


def build_detector(config: TrainingConfig, class_names: list[str]):
    """The model and image processor for a run: from `config.model` (labels mapped per `config.class_head`) or from a
    preset. Raises before any training when the checkpoint's label set can't be used as asked."""
    from .configuration_detr import DetrConfig
    from .image_processing_detr import DetrImageProcessor

    id2label = dict(enumerate(class_names))
    label2id = {name: i for i, name in id2label.items()}
    if config.class_head not in ("auto", "reuse", "new"):
        raise ValueError(f"class_head={config.class_head!r}: use 'auto', 'reuse' or 'new'")
    if config.model is None:
        model_config = preset_config(config.model_preset, **config.model_overrides)
        model_config.id2label, model_config.label2id = id2label, label2id
        model = detector_class(model_config.model_type)(model_config)
        processor = DetrImageProcessor()
    else:
        source = DetrConfig.get_config_dict(config.model)[0]
        model_class = detector_class(source.get("model_type"))
        checkpoint_labels = {int(k): v for k, v in (source.get("id2label") or {}).items()}
        rows = match_class_names(class_names, checkpoint_labels)
        if config.class_head == "reuse" and rows is None:
            missing = [
                n for n in class_names if n.strip().lower() not in {v.lower() for v in checkpoint_labels.values()}
            ]
            raise ValueError(
                f"class_head='reuse' needs every dataset class in the checkpoint {config.model}, which does not know "
                f"{missing}; its labels are {sorted(set(checkpoint_labels.values()))[:20]}... Use class_head='new'."
            )
        if rows is not None and config.class_head != "new":
            model = model_class.from_pretrained(config.model, **config.model_overrides)
            keep_class_rows(model, rows, class_names)
        else:
            model = model_class.from_pretrained(
                config.model, id2label=id2label, label2id=label2id, **config.model_overrides
            )
        try:
            processor = DetrImageProcessor.from_pretrained(config.model)
        except OSError:
            processor = DetrImageProcessor()
    processor.use_focal_loss = model.config.use_focal_loss
    return model, processor


def eval_dataloader(dataset, image_processor, batch_size: int = 8, num_workers: int = 0, seed: int = 0):
    """Batches of a detection split for evaluation: resized as `image_processor.size` says, collated by it.

    Every size form of the DETR image processors (ours and transformers', a dict or a ``SizeDict``) is understood:
    ``shortest_edge`` (with or without ``longest_edge``), ``max_height``/``max_width`` (fit inside, up or down) and
    ``height``/``width`` (exact); a processor with ``do_resize=False`` gets the images at their own size.
    """
    import albumentations as A
    from torch.utils.data import DataLoader

    from .data.transforms import bbox_params, build_transforms, make_collate_fn, make_transform_fn
    from .image_processing_detr import standardize_size

    keys = ("shortest_edge", "longest_edge", "max_height", "max_width", "height", "width")
    size = standardize_size({key: image_processor.size.get(key) for key in keys})
    if not getattr(image_processor, "do_resize", True):
        pipeline = None
    elif "shortest_edge" in size:
        pipeline = build_transforms("eval", [size["shortest_edge"]], size.get("longest_edge"))
    else:
        if "height" in size:
            resize = A.Resize(size["height"], size["width"], area_for_downscale="image")
        else:
            resize = A.LongestMaxSize(max_size_hw=(size["max_height"], size["max_width"]), area_for_downscale="image")
        pipeline = A.Compose([resize], bbox_params=bbox_params(0.0))
    return DataLoader(
        dataset.with_transform(make_transform_fn(pipeline)),
        batch_size=batch_size,
        collate_fn=make_collate_fn(image_processor),
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
