"""Detection heads: the box MLP, box refinement around references, and shrinking class heads to a label subset."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig


class DetrMLPPredictionHead(nn.Module):
    """The box head: a small MLP with ReLU between layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(dims, [*dims[1:], output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x), clamped so that boxes at the image border stay finite."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_boxes(delta: Tensor, reference: Tensor) -> Tensor:
    """Boxes (cx, cy, w, h) in [0, 1] from predicted logit-space deltas around reference points or boxes."""
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    return torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()


def _keep_rows(head: nn.Linear, keep: list[int]) -> None:
    head.weight = nn.Parameter(head.weight.detach()[keep].clone())
    head.bias = nn.Parameter(head.bias.detach()[keep].clone())
    head.out_features = len(keep)


def shrink_class_heads(
    config: PretrainedConfig,
    class_heads: Iterable[nn.Linear],
    rows: list[int],
    class_names: list[str],
    label_embedding: nn.Embedding | None = None,
    objectness_heads: Iterable[nn.Linear] = (),
) -> None:
    """Shrinks every class head to the labels `rows` (in `class_names`' order), keeping "no object" (softmax), and a
    label embedding with a row per class then a padding row (DINO's denoising) alike; sets `id2label`/`label2id`.

    `objectness_heads` (two-stage's proposal scorer, trained class-agnostically on its first column) keep that first
    column first, so that the same proposals are selected."""
    old_width = config.num_classes_with_background
    keep = list(rows) + ([] if config.use_focal_loss else [old_width - 1])
    for module in class_heads:
        if module.out_features == old_width:
            _keep_rows(module, keep)
    for module in objectness_heads:
        if module.out_features == old_width:
            _keep_rows(module, [0, *keep[1:]])
    if label_embedding is not None:
        label_embedding.weight = nn.Parameter(label_embedding.weight.detach()[[*rows, config.num_labels]].clone())
        label_embedding.num_embeddings = len(rows) + 1
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: i for i, name in enumerate(class_names)}


__all__ = ["DetrMLPPredictionHead", "inverse_sigmoid", "refine_boxes", "shrink_class_heads"]
