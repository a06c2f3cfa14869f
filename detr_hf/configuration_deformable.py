"""DeformableDetrConfig: DETR's options plus multi-scale deformable attention and iterative box refinement."""

from __future__ import annotations

from typing import Any

from .configuration_detr import DetrConfig

# Options of transformers' DeformableDetrConfig with no meaning here: accepted and dropped.
_IGNORED_DEFORMABLE_KEYS = ("return_intermediate", "max_position_embeddings", "disable_custom_kernels")


class DeformableDetrConfig(DetrConfig):
    r"""Configuration of [`DeformableDetrForObjectDetection`] (Zhu et al. 2021, "Deformable DETR").

    It also reads the `config.json` of transformers' Deformable DETR (model_type "deformable_detr").

    Args (beyond [`DetrConfig`]'s):
        num_feature_levels: feature levels the transformer sees. They are the backbone's `out_features` (a single
            out feature, DETR's default, becomes the last `min(num_feature_levels, 3)` stages), then, when more levels
            are asked for than the backbone gives, stride-2 3x3 convolutions on the last one.
        encoder_n_points, decoder_n_points: sampling points per attention head and level.
        with_box_refine: each decoder layer refines the previous layer's boxes (its own class and box heads).
        two_stage: the decoder's queries are the encoder's `two_stage_num_proposals` top-scoring proposals (boxes
            around each feature cell, refined by an extra head and trained class-agnostically), instead of learned
            embeddings; needs `with_box_refine`.
    Classification is sigmoid focal (`use_focal_loss=True`) by default, as in Deformable DETR.
    """

    model_type = "detr_hf_deformable"

    num_feature_levels: int = 3
    encoder_n_points: int = 4
    decoder_n_points: int = 4
    with_box_refine: bool = True
    two_stage: bool = False
    two_stage_num_proposals: int = 300
    use_focal_loss: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        for key in _IGNORED_DEFORMABLE_KEYS:
            kwargs.pop(key, None)
        super().__post_init__(**kwargs)
        out_features = list(self.backbone_config.out_features)
        stages = self.backbone_config.stage_names[1:]  # without the stem
        if len(out_features) == 1 and self.num_feature_levels > 1:
            out_features = stages[-min(self.num_feature_levels, 3) :]
        out_features = out_features[-self.num_feature_levels :]
        if out_features != list(self.backbone_config.out_features):
            self.backbone_config.out_features = out_features
            self.backbone_config.out_indices = [stages.index(s) + 1 for s in out_features]

    @property
    def num_backbone_levels(self) -> int:
        """Feature levels taken from the backbone; the others are strided convolutions on the last one."""
        return len(self.backbone_config.out_features)

    @classmethod
    def dino_like(cls, **overrides: Any) -> DeformableDetrConfig:
        """The fast-converging combination: multi-scale deformable attention, iterative box refinement, sigmoid focal
        loss with the seed's weights (class 2, L1 5, GIoU 2) in both matching and loss, auxiliary losses, no dropout."""
        preset = dict(
            use_focal_loss=True,
            class_cost=2.0,
            bbox_cost=5.0,
            giou_cost=2.0,
            class_loss_coefficient=2.0,
            bbox_loss_coefficient=5.0,
            giou_loss_coefficient=2.0,
            auxiliary_loss=True,
            with_box_refine=True,
            dropout=0.0,
            frozen_backbone_stages=-1,
        )
        return cls(**{**preset, **overrides})


__all__ = ["DeformableDetrConfig"]
