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
        encoder_type, decoder_type: the encoder and decoder to build, by name in `detr_hf.layers.registry`
            (`"deformable"`: multi-scale deformable attention).
        num_feature_levels: feature levels the transformer sees. They are the backbone's `out_features` (a single
            out feature, DETR's default, becomes the last `min(num_feature_levels, 3)` stages), then, when more levels
            are asked for than the backbone gives, stride-2 3x3 convolutions on the last one.
        encoder_n_points, decoder_n_points: sampling points per attention head and level.
        with_box_refine: each decoder layer refines the previous layer's boxes (its own class and box heads).
        two_stage: the decoder's queries are the encoder's `two_stage_num_proposals` top-scoring proposals (boxes
            around each feature cell, refined by an extra head and trained class-agnostically), instead of learned
            embeddings; needs `with_box_refine`.
        anchor_queries: queries carry 4-D anchor boxes (DAB-DETR): each decoder layer derives its queries' position
            embeddings from their current boxes (sine embedding, then `ref_point_head`). Without `two_stage` the
            anchors are learned; with it they are the selected proposals.
        mixed_query_selection: with `two_stage` and `anchor_queries`, the selected proposals give only the anchors
            while the content queries are learned (DINO); otherwise the content is the selected encoder features.
        look_forward_twice: each layer's box prediction also trains the layer before it, through the (not
            detached) box it was refining (DINO); the next layer's input box stays detached.
        num_denoising: the most denoising queries in training (DN-DETR, contrastive as in DINO): noised copies of
            the ground truth, in as many groups of a positive and a negative copy of every object as fit (at least
            one), that learn to reconstruct their box (positives) or to reject it (negatives); an attention mask keeps
            them from the matching queries and from each other. 0 disables; needs `anchor_queries`.
        label_noise_ratio: denoising queries whose class is flipped is half this share.
        box_noise_scale: denoising box noise, relative to each box's half size (negatives get 1 to 2 times it).
    Classification is sigmoid focal (`use_focal_loss=True`) by default, as in Deformable DETR.
    """

    model_type = "detr_hf_deformable"

    encoder_type: str = "deformable"
    decoder_type: str = "deformable"
    num_feature_levels: int = 3
    encoder_n_points: int = 4
    decoder_n_points: int = 4
    with_box_refine: bool = True
    two_stage: bool = False
    two_stage_num_proposals: int = 300
    anchor_queries: bool = False
    mixed_query_selection: bool = False
    look_forward_twice: bool = False
    num_denoising: int = 0
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
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
        self._check_options()

    def _check_options(self) -> None:
        if self.two_stage and not self.with_box_refine:
            raise ValueError("two_stage=True needs with_box_refine=True in detr_hf's Deformable DETR.")
        if self.num_denoising and not self.anchor_queries:
            raise ValueError("num_denoising > 0 needs anchor_queries=True: denoising queries are noised anchor boxes.")
        if self.mixed_query_selection and not (self.two_stage and self.anchor_queries):
            raise ValueError("mixed_query_selection=True needs two_stage=True and anchor_queries=True.")
        if self.look_forward_twice and not self.with_box_refine:
            raise ValueError("look_forward_twice=True needs with_box_refine=True.")

    @property
    def num_backbone_levels(self) -> int:
        """Feature levels taken from the backbone; the others are strided convolutions on the last one."""
        return len(self.backbone_config.out_features)

    @classmethod
    def dino_like(cls, **overrides: Any) -> DeformableDetrConfig:
        """The fast-converging combination (DINO's recipe on Deformable DETR): multi-scale deformable attention,
        two-stage anchors with mixed query selection, iterative box refinement that looks forward twice, contrastive
        denoising queries (24: two groups for images of up to 6 objects, one for more; DINO's 100 cost more time on
        CPU than they saved in a 10-minute budget, 24 gained), sigmoid focal loss with the seed's weights (class 2,
        L1 5, GIoU 2) in both matching and loss, auxiliary losses, no dropout. `num_queries` is the number of
        selected proposals."""
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
            two_stage=True,
            two_stage_num_proposals=overrides.get("num_queries", cls.num_queries),
            anchor_queries=True,
            mixed_query_selection=True,
            look_forward_twice=True,
            num_denoising=24,
            dropout=0.0,
            frozen_backbone_stages=-1,
        )
        return cls(**{**preset, **overrides})


__all__ = ["DeformableDetrConfig"]
