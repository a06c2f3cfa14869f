"""Tiny random configs of every transformers DETR family detr_hf adapts (a few tens of thousands of parameters)."""

from __future__ import annotations

from typing import Any

RESNET = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1],
          "layer_type": "bottleneck", "out_features": ["stage4"]}  # fmt: skip
RT_RESNET = {"model_type": "rt_detr_resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 24, 32],
             "depths": [1, 1, 1, 1], "layer_type": "basic", "out_features": ["stage2", "stage3", "stage4"]}  # fmt: skip
HGNET = {
    "model_type": "hgnet_v2", "stage_in_channels": [8, 16, 16, 32], "stage_mid_channels": [8, 8, 16, 16],
    "stage_out_channels": [16, 16, 32, 32], "stage_num_blocks": [1, 1, 1, 1],
    "stage_downsample": [False, True, True, True], "stage_light_block": [False, False, True, True],
    "stage_kernel_size": [3, 3, 5, 5], "stage_numb_of_layers": [1, 1, 1, 1], "embeddings_size": 8,
    "hidden_sizes": [16, 16, 32, 32], "depths": [1, 1, 1, 1], "out_features": ["stage2", "stage3", "stage4"],
    "stem_channels": [3, 8, 8], "use_lab": False,
}  # fmt: skip
DETR_LIKE = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32,
             "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_queries": 10}  # fmt: skip
RT_LIKE = {"encoder_hidden_dim": 16, "encoder_in_channels": [16, 24, 32], "feat_strides": [8, 16, 32],
           "encoder_layers": 1, "encoder_ffn_dim": 32, "encoder_attention_heads": 2, "d_model": 16, "num_queries": 10,
           "decoder_in_channels": [16, 16, 16], "decoder_ffn_dim": 32, "decoder_layers": 2,
           "decoder_attention_heads": 2, "num_denoising": 10}  # fmt: skip
VIT = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 64, "patch_size": 16}
LIGHT_DECODER = {"d_model": 32, "projector_scale_factors": [0.5, 2.0], "decoder_ffn_dim": 32, "decoder_layers": 2,
                 "decoder_self_attention_heads": 2, "decoder_cross_attention_heads": 4, "num_queries": 10,
                 "group_detr": 2}  # fmt: skip


def tiny_options(model_type: str) -> dict[str, Any]:
    """Config fields of a tiny random model of `model_type` for 64 px images (what `model_overrides` would hold)."""
    if model_type in ("detr", "conditional_detr", "table-transformer"):
        return {"backbone_config": RESNET, **DETR_LIKE}
    if model_type == "dab-detr":
        options = {"backbone_config": RESNET, **DETR_LIKE}
        options["hidden_size"] = options.pop("d_model")
        return options
    if model_type == "deformable_detr":
        backbone = {**RESNET, "out_features": ["stage2", "stage3", "stage4"]}
        return {"backbone_config": backbone, **DETR_LIKE, "num_feature_levels": 3, "encoder_n_points": 2,
                "decoder_n_points": 2}  # fmt: skip
    if model_type in ("rt_detr", "rt_detr_v2"):
        return {"backbone_config": RT_RESNET, **RT_LIKE}
    if model_type in ("d_fine", "deimv2"):
        points = [3, 6, 3] if model_type == "deimv2" else 4
        return {"backbone_config": HGNET, **RT_LIKE, "encoder_in_channels": [16, 32, 32], "decoder_n_points": points,
                "depth_mult": 0.34, "hidden_expansion": 0.5, "decoder_offset_scale": 0.5}  # fmt: skip
    if model_type == "yolos":
        return {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
                "image_size": [64, 64], "patch_size": 16, "num_detection_tokens": 10}  # fmt: skip
    if model_type == "lw_detr":
        backbone = {"model_type": "lw_detr_vit", **VIT, "mlp_ratio": 2, "pretrain_image_size": 64,
                    "window_block_indices": [0, 2], "out_indices": [1, 3], "num_windows": 4}  # fmt: skip
        return {"backbone_config": backbone, **LIGHT_DECODER}
    if model_type == "rf_detr":
        backbone = {"model_type": "rf_detr_dinov2", **VIT, "num_windows": 2, "out_features": ["stage2", "stage3"]}
        return {"backbone_config": backbone, **LIGHT_DECODER}
    raise KeyError(model_type)


def save_tiny_checkpoint(model_type: str, folder: Any, labels: list[str], image_size: int = 64) -> None:
    """A tiny random model of `model_type` knowing `labels`, saved with its family's image processor."""
    import torch
    from transformers import AutoConfig, AutoModelForObjectDetection

    from detr_hf.families import family_for
    from detr_hf.families.loading import default_processor, set_input_size

    torch.manual_seed(0)
    id2label = dict(enumerate(labels))
    config = AutoConfig.for_model(
        model_type, **tiny_options(model_type), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    AutoModelForObjectDetection.from_config(config).save_pretrained(folder)
    processor = default_processor(family_for(model_type, native_too=True))
    set_input_size(processor, [image_size], image_size)
    processor.save_pretrained(folder)
