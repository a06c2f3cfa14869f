"""The families of transformers' object-detection models detr_hf fine-tunes, by ``model_type``."""

from __future__ import annotations

from .base import FamilyAdapter

FAMILIES: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        "DETR (transformers)", ("detr",), no_object_class=True, processor="DetrImageProcessorPil",
        checkpoints=("facebook/detr-resnet-50", "facebook/detr-resnet-101"),
    ),
    FamilyAdapter(
        "Table Transformer", ("table-transformer",), no_object_class=True, processor="DetrImageProcessorPil",
        checkpoints=("microsoft/table-transformer-detection", "microsoft/table-transformer-structure-recognition"),
    ),
    FamilyAdapter(
        "YOLOS", ("yolos",), no_object_class=True, processor="YolosImageProcessorPil",
        checkpoints=("hustvl/yolos-small", "hustvl/yolos-base"),
    ),
    FamilyAdapter(
        "Conditional DETR", ("conditional_detr",), no_object_class=False, processor="ConditionalDetrImageProcessorPil",
        checkpoints=("microsoft/conditional-detr-resnet-50",),
    ),
    # DAB-DETR scores with a sigmoid: post-processed by Conditional DETR's processor (same resizing as DETR's)
    FamilyAdapter(
        "DAB-DETR", ("dab-detr",), no_object_class=False, processor="ConditionalDetrImageProcessorPil",
        force_processor=True, checkpoints=("IDEA-Research/dab-detr-resnet-50",),
    ),
    FamilyAdapter(
        "Deformable DETR (transformers)", ("deformable_detr",), no_object_class=False,
        processor="DeformableDetrImageProcessorPil", checkpoints=("SenseTime/deformable-detr",),
    ),
    FamilyAdapter(
        "RT-DETR", ("rt_detr",), no_object_class=False, processor="RTDetrImageProcessorPil", denoising=True,
        checkpoints=("PekingU/rtdetr_r50vd", "PekingU/rtdetr_r18vd", "PekingU/rtdetr_r50vd_coco_o365"),
    ),
    FamilyAdapter(
        "RT-DETRv2", ("rt_detr_v2",), no_object_class=False, processor="RTDetrImageProcessorPil", denoising=True,
        checkpoints=("PekingU/rtdetr_v2_r18vd", "PekingU/rtdetr_v2_r50vd", "PekingU/rtdetr_v2_r101vd"),
    ),
    FamilyAdapter(
        "D-FINE", ("d_fine",), no_object_class=False, processor="RTDetrImageProcessorPil", denoising=True,
        checkpoints=("ustc-community/dfine-small-coco", "ustc-community/dfine-medium-obj2coco",
                     "ustc-community/dfine-xlarge-obj365"),
    ),
    FamilyAdapter(
        "DEIMv2", ("deimv2",), no_object_class=False, processor="RTDetrImageProcessorPil", denoising=True,
    ),
    # LW-DETR and RF-DETR post-process like Deformable DETR (sigmoid top-k); RF-DETR's own processor needs
    # torchvision, so its settings are read into Deformable DETR's PIL processor, which resizes and pads the same way
    FamilyAdapter(
        "LW-DETR", ("lw_detr",), no_object_class=False, processor="DeformableDetrImageProcessorPil",
    ),
    FamilyAdapter(
        "RF-DETR", ("rf_detr",), no_object_class=False, processor="DeformableDetrImageProcessorPil",
        force_processor=True,
    ),
)  # fmt: skip
"""Each supported family; detr_hf's own DETR and Deformable DETR (model types ``detr``/``deformable_detr`` too, whose
checkpoints load into detr_hf's classes) are not here: they stay native."""

NATIVE_MODEL_TYPES = ("detr", "detr_hf", "deformable_detr", "detr_hf_deformable", None)
NATIVE_PRESETS = ("detr", "dino_like")
_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def family_for(model_type: str | None, *, native_too: bool = False) -> FamilyAdapter | None:
    """The adapter of a ``model_type``; None for the types detr_hf runs natively. Raises for an unknown type."""
    if model_type in NATIVE_MODEL_TYPES and not native_too:
        return None
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    known = [*sorted(_BY_MODEL_TYPE), "detr_hf", "detr_hf_deformable"]
    raise ValueError(
        f"Checkpoints of model_type {model_type!r} are not supported. detr_hf fine-tunes these object-detection "
        f"model types: {', '.join(known)} (see docs/families.md)."
    )


def runs_natively(model: str | None, preset: str | None = None) -> bool:
    """Whether a run's model (a checkpoint, else the ``preset``) is detr_hf's own; False for a transformers family
    with an adapter. Raises for a model type detr_hf does not know."""
    if model is None:
        if preset in NATIVE_PRESETS or preset in NATIVE_MODEL_TYPES:
            return True  # "detr", "dino_like"; detr_hf's own types are refused by the native preset check
        if preset not in _BY_MODEL_TYPE:
            raise ValueError(
                f"model_preset={preset!r}: use 'detr', 'dino_like' or one of transformers' model types "
                f"{', '.join(sorted(_BY_MODEL_TYPE))} (a random model, sized by model_overrides)"
            )
        return False
    from ..pretrained import checkpoint_config

    return family_for(checkpoint_config(model).get("model_type")) is None
