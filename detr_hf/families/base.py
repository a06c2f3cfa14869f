"""What detr_hf needs to know about one transformers DETR-family architecture: :class:`FamilyAdapter`.

Every family runs through transformers' ``AutoModelForObjectDetection`` with its own loss; they differ in how their
image processor resizes (a padded shortest edge, or one fixed square), whether the classifier has a trailing
"no object" logit (softmax) or not (sigmoid / focal), which image processor post-processes their logits, and which
config fields a checkpoint can take as ``model_overrides`` without changing the shape of its weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Fields a checkpoint can take without changing the shape of a trained weight (or only the query tables, which are
# then re-initialized and reported): the matcher, the loss, dropout, denoising and query counts.
TRAINING_FIELDS = re.compile(
    r"^(num_queries|num_denoising|label_noise_ratio|box_noise_scale|.*dropout|auxiliary_loss|.*loss.*|.*_cost"
    r"|matcher_.*|focal_.*|mal_alpha|eos_coefficient|group_detr|freeze_backbone_batch_norms|use_focal_loss"
    r"|eval_size|anchor_image_size|num_top_queries|eval_idx)$"
)
# Every classifier of the family (per decoder layer, encoder proposals, group-DETR encoder heads) and the
# denoising label embedding, by module name; they are found by name and by their number of class rows.
CLASS_HEAD_NAMES = re.compile(
    r"(^|\.)(class_labels_classifier(\.layers\.\d+)?|class_embed(\.\d+)?|enc_score_head|enc_out_class_embed\.\d+"
    r"|denoising_class_embed)$"
)


@dataclass(frozen=True)
class FamilyAdapter:
    """One family of transformers object-detection models, as the recipe and the ``Detector`` see it.

    Args:
        name: the family as people call it ("RT-DETRv2").
        model_types: the ``config.model_type`` values it covers.
        no_object_class: the classifier has ``num_labels + 1`` outputs, the last one "no object" (softmax scoring);
            otherwise ``num_labels`` sigmoid outputs.
        processor: the image processor class used when a checkpoint has none, from scratch, or always when
            ``force_processor`` (a transformers class name, its PIL backend: it needs no torchvision).
        force_processor: load the checkpoint's processor settings into ``processor`` even when the checkpoint names
            another class (e.g. one that needs torchvision, or that post-processes with a softmax a sigmoid model).
        denoising: the family trains with denoising queries (``num_denoising`` applies).
        checkpoints: Hub checkpoints to start from, for the docs.
    """

    name: str
    model_types: tuple[str, ...]
    no_object_class: bool
    processor: str
    force_processor: bool = False
    denoising: bool = False
    checkpoints: tuple[str, ...] = ()

    def check_overrides(self, overrides: dict, known_fields: set[str], from_checkpoint: bool) -> None:
        """Refuses, with the reason, the ``model_overrides`` this family can't take: fields its config does not
        have, denoising options of a family without denoising, and (from a checkpoint) fields that would change the
        shape of trained weights."""
        for key in overrides:
            if key in ("num_denoising", "label_noise_ratio", "box_noise_scale") and not self.denoising:
                raise ValueError(
                    f"model_overrides.{key}: {self.name} ({self.model_types[0]}) trains without denoising queries; "
                    "drop this option (the RT-DETR, D-FINE and DEIM families and dino_like have it)"
                )
            if key not in known_fields and key not in ("id2label", "label2id"):
                raise ValueError(
                    f"model_overrides.{key}: {self.name} ({self.model_types[0]}) has no such option; its options: "
                    f"{', '.join(sorted(k for k in known_fields if not k.startswith('_')))}"
                )
            if from_checkpoint and not TRAINING_FIELDS.match(key):
                raise ValueError(
                    f"model_overrides.{key}: changing it would change the shape of the checkpoint's trained weights. "
                    "From a checkpoint only these kinds of options apply: query and denoising counts, dropout, loss "
                    "and matcher weights. Train a new architecture from scratch with model_preset="
                    f"{self.model_types[0]!r} instead."
                )

    def is_class_head(self, module_name: str) -> bool:
        """Whether ``module_name`` names one of the family's classifiers or its denoising label embedding."""
        return bool(CLASS_HEAD_NAMES.search(module_name))
