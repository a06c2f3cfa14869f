"""DetrConfig: the architectural and loss options of detr_hf's DETR (`DeformableDetrConfig` extends them)."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig, ResNetConfig
from transformers.configuration_utils import SubConfigSpec

# Architectures of the timm ResNets that transformers' DETR checkpoints name in `backbone` (Hub main revision).
_TIMM_RESNETS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
}
# Options of transformers' DetrConfig that have no meaning here (segmentation, layerdrop): accepted and dropped.
_IGNORED_LEGACY_KEYS = ("mask_loss_coefficient", "dice_loss_coefficient", "encoder_layerdrop", "decoder_layerdrop")


def resnet_config_for(name: str, num_channels: int = 3, out_features: list[str] | None = None) -> ResNetConfig:
    """A transformers `ResNetConfig` with the architecture of the timm/torchvision ResNet called `name`."""
    if name.split(".")[0] not in _TIMM_RESNETS:
        raise ValueError(f"Unknown ResNet {name!r}; known: {sorted(_TIMM_RESNETS)}, or pass a `backbone_config`.")
    layer_type, depths = _TIMM_RESNETS[name.split(".")[0]]
    widths = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    return ResNetConfig(
        num_channels=num_channels,
        embedding_size=64,
        hidden_sizes=widths,
        depths=depths,
        layer_type=layer_type,
        downsample_in_bottleneck=False,  # stride in the 3x3 conv, as timm and torchvision (ResNet v1.5)
        out_features=out_features or ["stage4"],
    )


class DetrConfig(PretrainedConfig):
    r"""Configuration of [`DetrForObjectDetection`].

    Defaults reproduce DETR-R50 (Carion et al. 2020) with auxiliary decoding losses on. It also reads the
    `config.json` of transformers' DETR checkpoints (e.g. facebook/detr-resnet-50), timm backbone names included.

    Args:
        backbone_config: any transformers backbone config (`ResNetConfig` by default: ResNet-50, last stage).
        backbone: a Hub id or folder of a transformers backbone to load when `use_pretrained_backbone` is set.
        use_pretrained_backbone: load `backbone`'s ImageNet weights instead of a random init.
        frozen_backbone_stages: backbone stages kept frozen after the (always frozen) stem; DETR trains stages 2-4.
            -1 trains everything, the stem too.
        freeze_backbone_batch_norms: BatchNorm with fixed statistics and affine parameters, folded into the
            convolutions (DETR's choice for a pretrained backbone and small batches). False keeps ordinary BatchNorm,
            trained with batch statistics: what a backbone trained from scratch needs (RT-DETR's option of that name).
        num_channels: image channels; pretrained first-conv weights are inflated when it is not 3.
        num_queries: object queries, the most objects the model can return for one image.
        d_model, encoder_layers, decoder_layers, encoder_ffn_dim, decoder_ffn_dim, encoder_attention_heads,
        decoder_attention_heads, dropout, attention_dropout, activation_dropout, activation_function: the transformer.
        auxiliary_loss: supervise every decoder layer (40.8 vs 35.5 AP in the DETR paper's ablation).
        class_cost, bbox_cost, giou_cost: weights of the Hungarian matching cost.
        class_loss_coefficient, bbox_loss_coefficient, giou_loss_coefficient: weights of the loss terms.
        eos_coefficient: weight of the "no object" class in the softmax cross-entropy.
        use_focal_loss: sigmoid focal classification (no "no object" class) instead of softmax cross-entropy.
        focal_alpha, focal_gamma: focal loss parameters.
    """

    model_type = "detr_hf"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig, model_type="resnet", init_kwargs={"out_features": ["stage4"]}
        ),
    }
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    backbone_config: dict | PretrainedConfig | None = None
    backbone: str | None = None
    use_pretrained_backbone: bool = False
    frozen_backbone_stages: int = 1
    freeze_backbone_batch_norms: bool = True
    num_channels: int = 3
    num_queries: int = 100
    d_model: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "relu"
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    position_embedding_type: str = "sine"
    is_encoder_decoder: bool = True
    auxiliary_loss: bool = True
    class_cost: float = 1.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0
    class_loss_coefficient: float = 1.0
    bbox_loss_coefficient: float = 5.0
    giou_loss_coefficient: float = 2.0
    eos_coefficient: float = 0.1
    use_focal_loss: bool = False
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self, **kwargs: Any) -> None:
        for key in (*_IGNORED_LEGACY_KEYS, "model_type"):  # model_type is a class attribute ("detr" in old files)
            kwargs.pop(key, None)
        if kwargs.pop("dilation", False):
            raise ValueError("DC5 (dilated last stage) checkpoints are not supported by detr_hf.")
        use_timm_backbone = kwargs.pop("use_timm_backbone", None)
        kwargs.pop("backbone_kwargs", None)
        timm_name = None
        if isinstance(self.backbone_config, dict) and self.backbone_config.get("model_type") == "timm_backbone":
            timm_name = self.backbone_config.get("backbone", "resnet50")
        elif self.backbone_config is None and (use_timm_backbone or self.backbone in _TIMM_RESNETS):
            timm_name = self.backbone or "resnet50"
        if timm_name is not None:
            self.backbone_config = resnet_config_for(timm_name, self.num_channels)
            if self.backbone in _TIMM_RESNETS:
                self.backbone = None  # a timm name, not a transformers checkpoint to load
        if self.position_embedding_type != "sine":
            raise ValueError(f"position_embedding_type={self.position_embedding_type!r}: only 'sine' is supported.")
        if self.d_model % self.encoder_attention_heads or self.d_model % self.decoder_attention_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by the number of attention heads.")
        super().__post_init__(**kwargs)
        if getattr(self.backbone_config, "num_channels", self.num_channels) != self.num_channels:
            self.backbone_config.num_channels = self.num_channels

    @property
    def num_classes_with_background(self) -> int:
        """Width of the class head: one logit per class, plus "no object" unless focal loss is used."""
        return self.num_labels + (0 if self.use_focal_loss else 1)


__all__ = ["DetrConfig", "resnet_config_for"]
