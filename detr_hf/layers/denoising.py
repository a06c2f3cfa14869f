"""Denoising queries (DN-DETR, in DINO's contrastive form): noised ground-truth boxes and labels fed to the decoder in
training, whose targets are known, so that box regression learns without waiting for the Hungarian matching to settle.

Each group holds a positive copy of every object (small noise: reconstruct the box, predict the class) and a negative
copy (larger noise: predict "no object"). The attention mask keeps the matching queries from seeing any denoising
query (they would read the answer) and each group from seeing the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..box_ops import cxcywh_to_xyxy, xyxy_to_cxcywh
from .matcher import Matching, Targets


@dataclass
class DenoisingQueries:
    """Denoising queries put in front of the matching queries, and what is needed to score them."""

    content: Tensor  # (batch, num_queries, d_model): the embedded (noised) labels
    boxes: Tensor  # (batch, num_queries, 4): the noised boxes, (cx, cy, w, h) in [0, 1]
    attention_mask: Tensor  # (num_queries + matching queries,) * 2, bool, True where a query may attend
    groups: int
    max_objects: int  # objects of the fullest image: each group is 2 * max_objects queries

    @property
    def num_queries(self) -> int:
        return self.content.shape[1]

    def prepend_to(self, target: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """The decoder's inputs with the denoising queries in front of the matching ones: content `(batch, queries,
        d_model)` and reference boxes `(batch, queries, 4)`."""
        target = torch.cat([self.content.to(target.dtype), target], 1)
        return target, torch.cat([self.boxes.to(reference.dtype), reference], 1)

    def matching(self, targets: Targets) -> Matching:
        """Per image, (denoising query indices, target indices) of the positive copies: the known assignment that
        replaces the Hungarian matching for these queries."""
        matching = []
        for target in targets:
            objects = torch.arange(len(target["class_labels"]))
            starts = torch.arange(self.groups) * 2 * self.max_objects
            rows = (starts[:, None] + objects[None]).flatten()
            matching.append((rows, objects.repeat(self.groups)))
        return matching


def make_denoising_queries(
    targets: Targets,
    label_embedding: nn.Embedding,
    num_denoising: int,
    num_matching_queries: int,
    label_noise_ratio: float,
    box_noise_scale: float,
) -> DenoisingQueries | None:
    """Noised copies of `targets` (labels in `[0, num_classes)`, boxes normalized cxcywh) as decoder queries, in
    `num_denoising // (2 * max_objects)` groups (at least one) of a positive and a negative copy of every object, so
    that there are at most `num_denoising` queries (DINO's count); None when no image has an object.

    `label_embedding` has `num_classes + 1` rows, the last one for the padding of images with fewer objects."""
    counts = [len(t["class_labels"]) for t in targets]
    max_objects = max(counts, default=0)
    if max_objects == 0 or num_denoising <= 0:
        return None
    num_classes = label_embedding.num_embeddings - 1
    device = label_embedding.weight.device
    batch, groups = len(targets), max(1, num_denoising // (2 * max_objects))
    labels = torch.full((batch, max_objects), num_classes, dtype=torch.int64, device=device)
    boxes = torch.zeros(batch, max_objects, 4, device=device)
    real = torch.zeros(batch, max_objects, dtype=torch.bool, device=device)
    for i, (target, count) in enumerate(zip(targets, counts)):
        labels[i, :count] = target["class_labels"]
        boxes[i, :count] = target["boxes"].float()
        real[i, :count] = True
    # per group: positives then negatives, (batch, groups * 2 * max_objects)
    labels, boxes, real = (t.repeat(1, 2 * groups, *([1] * (t.dim() - 2))) for t in (labels, boxes, real))
    negative = torch.zeros(2 * max_objects, dtype=torch.bool, device=device)
    negative[max_objects:] = True
    negative = negative.repeat(groups)[None].expand(batch, -1)

    if label_noise_ratio > 0:
        flip = (torch.rand(labels.shape, device=device) < label_noise_ratio * 0.5) & real
        labels = torch.where(flip, torch.randint_like(labels, num_classes), labels)
    if box_noise_scale > 0:
        corners = cxcywh_to_xyxy(boxes)
        half_size = boxes[..., 2:].repeat(1, 1, 2) * 0.5 * box_noise_scale
        magnitude = torch.rand_like(boxes) + negative[..., None].float()  # positives in [0, 1), negatives [1, 2)
        sign = torch.randint_like(boxes, 2) * 2.0 - 1.0
        corners = (corners + sign * magnitude * half_size).clamp(0.0, 1.0)
        boxes = xyxy_to_cxcywh(corners)
    boxes = torch.where(real[..., None], boxes, torch.zeros_like(boxes))

    num_queries = labels.shape[1]
    total = num_queries + num_matching_queries
    group = torch.arange(num_queries, device=device) // (2 * max_objects)
    attention_mask = torch.ones(total, total, dtype=torch.bool, device=device)
    attention_mask[num_queries:, :num_queries] = False  # matching queries never see the denoising ones
    attention_mask[:num_queries, :num_queries] = group[:, None] == group[None, :]
    return DenoisingQueries(label_embedding(labels), boxes, attention_mask, groups, max_objects)


__all__ = ["DenoisingQueries", "make_denoising_queries"]
