"""Loading a trained detector: which detr_hf class reads a checkpoint, and a model with its processor for inference.

Checkpoints of detr_hf and of transformers' DETR family (``detr``, ``deformable_detr``) load into detr_hf's classes;
the recipe (``detr_hf.training.models``) and the ``detr-hf`` command both go through here.
"""

from __future__ import annotations

from typing import Any


def detector_class(model_type: str | None) -> type:
    """The detr_hf model class that loads checkpoints of `model_type` (ours, or transformers' DETR family)."""
    from .modeling_detr import DetrForObjectDetection

    if model_type in (None, "detr", "detr_hf"):
        return DetrForObjectDetection
    if model_type in ("deformable_detr", "detr_hf_deformable"):
        from .modeling_deformable import DeformableDetrForObjectDetection

        return DeformableDetrForObjectDetection
    raise ValueError(f"Checkpoints of model_type {model_type!r} are not supported; use a DETR or Deformable DETR one.")


def checkpoint_config(source: str) -> dict[str, Any]:
    """The raw ``config.json`` of a checkpoint folder or Hub id, whatever model class wrote it."""
    from .configuration_detr import DetrConfig

    return DetrConfig.get_config_dict(source)[0]


def load_detector(source: str) -> tuple[Any, Any]:
    """Any detector folder or Hub id detr_hf can load, in eval mode, with its image processor."""
    from .families.registry import runs_natively
    from .image_processing_detr import DetrImageProcessor

    if not runs_natively(source):  # a transformers DETR-family model: through its adapter
        from .families.loading import load_family_detector

        return load_family_detector(source)
    model = detector_class(checkpoint_config(source).get("model_type")).from_pretrained(source).eval()
    processor = DetrImageProcessor.from_pretrained(source)
    processor.use_focal_loss = model.config.use_focal_loss
    for key in ("detection_thresholds", "score_temperature"):  # the operating point (docs/reports.md) is the model's
        if getattr(model.config, key, None) is not None:
            setattr(processor, key, getattr(model.config, key))
    return model, processor
