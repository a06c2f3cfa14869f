"""The kit the models are assembled from: one module per component.

- backbone: any transformers backbone, channels-last, feature maps with padding masks (`DetrConvEncoder`)
- frozen_batch_norm: DETR's frozen BatchNorm; cpu_fusion: the CPU inference step that fuses it (`fuse_for_cpu_inference`)
- position_encoding: sine encodings of feature cells and of boxes
- attention: DETR's multi-head attention; deformable_attention: multi-scale deformable attention
- transformer: DETR's encoder and decoder; deformable_transformer: Deformable DETR's
- registry: the encoders and decoders a config names (`encoder_type`, `decoder_type`)
- multi_scale: per-level input projections and flattening for a multi-scale encoder
- query_selection: where the decoder's queries come from (learned, anchors, two-stage, mixed)
- denoising: DN-DETR/DINO denoising queries
- heads: box MLP, box refinement, class-head shrinking
- matcher: Hungarian matching; criterion: the set-prediction loss and its weights
"""

from .backbone import DetrConvEncoder
from .cpu_fusion import fuse_for_cpu_inference
from .criterion import SetCriterion, loss_weight_dict
from .deformable_attention import MultiScaleDeformableAttention
from .matcher import HungarianMatcher
from .query_selection import QUERY_SELECTIONS, QuerySelection, SelectedQueries, build_query_selection
from .registry import DECODERS, ENCODERS, build_decoder, build_encoder

__all__ = [
    "DECODERS",
    "ENCODERS",
    "QUERY_SELECTIONS",
    "DetrConvEncoder",
    "HungarianMatcher",
    "MultiScaleDeformableAttention",
    "QuerySelection",
    "SelectedQueries",
    "SetCriterion",
    "build_decoder",
    "build_encoder",
    "build_query_selection",
    "fuse_for_cpu_inference",
    "loss_weight_dict",
]
