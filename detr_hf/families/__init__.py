"""transformers' DETR-family object detectors (RT-DETR, D-FINE, DEIMv2, LW-DETR, RF-DETR, Conditional/DAB DETR,
YOLOS, Table Transformer...) fine-tuned and run by detr_hf through one adapter per family (:class:`FamilyAdapter`),
chosen by ``config.model_type``. detr_hf's own DETR and Deformable DETR stay native (see ``detr_hf.pretrained``).

- ``base``: :class:`FamilyAdapter`, what differs between families (scoring, processor, options that apply);
- ``registry``: :data:`FAMILIES` and :func:`family_for`;
- ``heads``: class heads cut to the dataset's classes by name;
- ``loading``: building a run's model and processor, loading a trained one, the input size and training resize.
"""

from .base import FamilyAdapter
from .registry import FAMILIES, NATIVE_PRESETS, family_for, runs_natively

__all__ = ["FAMILIES", "NATIVE_PRESETS", "FamilyAdapter", "family_for", "runs_natively"]
