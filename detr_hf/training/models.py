"""The model of a run: a preset trained from scratch, or a checkpoint whose class head is mapped to the dataset's
classes by name (`class_head`)."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PretrainedConfig

from ..families.loading import build_family_model
from ..families.registry import runs_natively
from ..image_processing_detr import DetrImageProcessor
from ..pretrained import checkpoint_config, detector_class
from .config import TrainingConfig


def preset_config(preset: str, **overrides: Any) -> PretrainedConfig:
    """A from-scratch model config: "detr" (DETR-R50 by default) or "dino_like" (the fast-converging combination)."""
    from ..configuration_detr import DetrConfig

    if preset == "detr":
        return DetrConfig(**overrides)
    if preset == "dino_like":
        from ..configuration_deformable import DeformableDetrConfig

        return DeformableDetrConfig.dino_like(**overrides)
    raise ValueError(f"model_preset={preset!r}: use 'detr' or 'dino_like'")


def match_class_names(dataset_names: list[str], checkpoint_names: dict[int, str]) -> list[int] | None:
    """For each dataset class, the checkpoint's label with the same name (case-insensitive), or None if any lacks one."""
    index = {name.strip().lower(): label for label, name in checkpoint_names.items()}
    rows = [index.get(name.strip().lower()) for name in dataset_names]
    return None if any(row is None for row in rows) else rows


def build_detector(config: TrainingConfig, class_names: list[str]) -> tuple[nn.Module, DetrImageProcessor]:
    """The model and image processor for a run: from `config.model` (labels mapped per `config.class_head`) or from a
    preset. Raises before any training when the checkpoint's label set can't be used as asked."""
    id2label = dict(enumerate(class_names))
    label2id = {name: i for i, name in id2label.items()}
    if config.class_head not in ("auto", "reuse", "new"):
        raise ValueError(f"class_head={config.class_head!r}: use 'auto', 'reuse' or 'new'")
    if not runs_natively(config.model, config.model_preset):  # a transformers family, through its adapter
        return build_family_model(config.model, config.model_preset, config.model_overrides, config.class_head,
                                  class_names)  # fmt: skip
    if config.model is None:
        model_config = preset_config(config.model_preset, **config.model_overrides)
        model_config.id2label, model_config.label2id = id2label, label2id
        model = detector_class(model_config.model_type)(model_config)
        processor = DetrImageProcessor()
    else:
        source = checkpoint_config(config.model)
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
            model.select_classes(rows, class_names)
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
