"""Building, loading and feeding the models of transformers' DETR families: the adapter-backed side of the recipe
(``detr_hf.training.models``) and of ``detr-hf evaluate/predict`` (``detr_hf.pretrained.load_detector``)."""

from __future__ import annotations

import logging
from typing import Any

import albumentations as A

from ..pretrained import checkpoint_config
from .base import FamilyAdapter
from .heads import select_class_rows
from .registry import family_for

logger = logging.getLogger(__name__)
_PROCESSOR_KEYS_TO_DROP = ("image_processor_type", "processor_class", "_processor_class", "backend")


def default_processor(family: FamilyAdapter, settings: dict | None = None) -> Any:
    """The family's own processor class (PIL backend), with a checkpoint's ``settings`` when given."""
    import transformers

    settings = {k: v for k, v in (settings or {}).items() if k not in _PROCESSOR_KEYS_TO_DROP}
    return getattr(transformers, family.processor)(**settings)


def load_processor(source: str, family: FamilyAdapter) -> Any:
    """The checkpoint's image processor; the family's own class with the checkpoint's settings when the named class
    can't run here (e.g. needs torchvision) or does not post-process this family right; defaults without one."""
    from transformers import AutoImageProcessor
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        settings = ImageProcessingMixin.get_image_processor_dict(source)[0]
    except OSError:
        logger.warning("%s has no preprocessor_config.json: using %s's defaults", source, family.processor)
        return default_processor(family)
    if not family.force_processor:
        try:
            return AutoImageProcessor.from_pretrained(source)
        except (ImportError, ValueError) as error:
            logger.warning("%s's image processor can't be used here (%s): using %s", source, error, family.processor)
    return default_processor(family, settings)


def known_fields(model_type: str) -> set[str]:
    """The config fields of a transformers model type."""
    from transformers import AutoConfig

    return set(AutoConfig.for_model(model_type).to_dict())


def build_family_model(
    model: str | None, preset: str, overrides: dict, class_head: str, class_names: list[str]
) -> tuple[Any, Any]:
    """A transformers model and its processor for a run: from the checkpoint ``model`` (its class heads mapped by
    name per ``class_head``) or, without one, a random one of ``preset`` (a model type) with ``overrides``."""
    from transformers import AutoConfig, AutoModelForObjectDetection

    from ..training.models import match_class_names

    id2label = dict(enumerate(class_names))
    labels = {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}
    if model is None:
        family = family_for(preset, native_too=True)
        family.check_overrides(overrides, known_fields(preset), from_checkpoint=False)
        detector = AutoModelForObjectDetection.from_config(AutoConfig.for_model(preset, **overrides, **labels))
        return detector, default_processor(family)
    source = checkpoint_config(model)
    family = family_for(source.get("model_type"), native_too=True)
    family.check_overrides(overrides, known_fields(source["model_type"]) | set(source), from_checkpoint=True)
    checkpoint_labels = {int(k): v for k, v in (source.get("id2label") or {}).items()}
    rows = match_class_names(class_names, checkpoint_labels)
    if class_head == "reuse" and rows is None:
        known = {v.strip().lower() for v in checkpoint_labels.values()}
        missing = [name for name in class_names if name.strip().lower() not in known]
        raise ValueError(
            f"class_head='reuse' needs every dataset class in the checkpoint {model}, which does not know {missing}; "
            f"its labels are {sorted(set(checkpoint_labels.values()))[:20]}... Use class_head='new'."
        )
    if rows is not None and class_head != "new":
        detector = _load(model, overrides)
        state, cut = select_class_rows(detector.state_dict(), family, rows, detector.config.num_labels)
        detector.config.update(labels)
        mapped = AutoModelForObjectDetection.from_config(detector.config)
        mapped.load_state_dict(state)
        logger.info("class heads mapped by name to the dataset's %d classes: %s", len(rows), ", ".join(cut))
        detector = mapped
    else:
        detector = _load(model, {**overrides, **labels})
    return detector, load_processor(model, family)


def _load(source: str, options: dict) -> Any:
    """``from_pretrained``; weights whose shape the options change (a new class count, more queries) start anew."""
    from transformers import AutoModelForObjectDetection

    model, info = AutoModelForObjectDetection.from_pretrained(
        source, ignore_mismatched_sizes=True, output_loading_info=True, **options
    )
    mismatched = [entry[0] if isinstance(entry, tuple) else entry for entry in info.get("mismatched_keys", [])]
    if mismatched:
        logger.info("%d weights of %s re-initialized for the new shapes: %s", len(mismatched), source, mismatched)
    return model


def load_family_detector(source: str) -> tuple[Any, Any]:
    """A trained transformers DETR-family model (folder or Hub id) in eval mode, with its image processor."""
    from transformers import AutoModelForObjectDetection

    family = family_for(checkpoint_config(source).get("model_type"), native_too=True)
    return AutoModelForObjectDetection.from_pretrained(source).eval(), load_processor(source, family)


def set_input_size(processor: Any, scales: list[int], max_size: int) -> None:
    """The size the processor resizes to at inference, as the evaluation does: a fixed square of ``max(scales)`` for
    processors that resize to a fixed size (RT-DETR-style), else shortest edge ``max(scales)`` capped by
    ``max_size``."""
    if fixed_input_size(processor) is not None:
        processor.size = _same_kind(processor.size, {"height": max(scales), "width": max(scales)})
    else:
        processor.size = _same_kind(processor.size, {"shortest_edge": max(scales), "longest_edge": max_size})


def _same_kind(old: Any, new: dict) -> Any:
    return type(old)(**new) if old is not None and not isinstance(old, dict) else new


def fixed_input_size(processor: Any) -> tuple[int, int] | None:
    """``(height, width)`` when the processor resizes every image to one size, else None."""
    size = getattr(processor, "size", None) or {}
    height, width = size.get("height"), size.get("width")
    return (int(height), int(width)) if height and width else None


def fit_pipeline_to_processor(pipeline: A.Compose, processor: Any) -> A.Compose:
    """The training augmentation with its resize replaced by the processor's fixed size when it has one (the model
    was trained at, and is evaluated at, that one size); unchanged otherwise."""
    from ..data.augmentations import ResizeShortestEdge

    size = fixed_input_size(processor)
    if size is None:
        return pipeline
    steps = [A.Resize(*size) if isinstance(step, ResizeShortestEdge) else step for step in pipeline.transforms]
    return A.Compose(steps, bbox_params=pipeline.processors["bboxes"].params, seed=pipeline.seed)
