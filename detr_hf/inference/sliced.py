"""Sliced inference: a large image as overlapping tiles batched through any :class:`Detector`, merged back.

from detr_hf import sliced_detection, SlicedDetector
result = sliced_detection(model, processor, "scene.png", tile_size=512, overlap=0.2, merge="nmm")
detector = SlicedDetector(load_inference_detector("runs/aerial"), tile_size=512)   # itself a Detector

The tiles of :func:`detr_hf.tiles.tile_windows` go through the detector ``batch_size`` at a time (one forward per
batch, not per tile), optionally with the whole image downscaled to ``full_image_size`` (large objects a tile would
cut); the detections are moved to image pixels and merged per class: ``"nms"`` keeps the best of each group of
matching boxes, ``"nmm"`` (greedy non-maximum merging) replaces the group by the union of its boxes, so the two
parts of an object cut by a tile border come back as one box. ``match_metric="ios"`` (intersection over the smaller
box) matches a fragment to its whole; ``"iou"`` is the classic criterion. Memory: one decoded copy of the image plus
one batch of tiles; a path is decoded by :func:`detr_hf.imaging.decode_large_image`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch

from ..box_ops import box_area, box_intersection
from ..imaging import decode_large_image
from ..tiles import tile_windows
from .detector import Detections, Detector, TorchDetector, image_size

__all__ = ["SlicedDetector", "merge_detections", "sliced_detection"]

Merge = Literal["nms", "nmm"]
MatchMetric = Literal["ios", "iou"]


def _empty() -> Detections:
    return {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}


def _matching_pairs(boxes: torch.Tensor, metric: MatchMetric, match_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, of boxes whose overlap exceeds the threshold, sorted by ``i``.

    Boxes are swept in order of their left edge, a block at a time against the boxes that start before the block's
    right edges end: time and memory grow with the boxes that can overlap, not with the square of their number."""
    by_x = boxes[:, 0].argsort()
    swept = boxes[by_x]
    areas = box_area(swept)
    lefts = swept[:, 0].contiguous()
    first, second = [], []
    block = 256
    for start in range(0, len(swept), block):
        stop = min(start + block, len(swept))
        end = int(torch.searchsorted(lefts, swept[start:stop, 2].max(), right=True))
        columns = slice(start, max(end, stop))
        inter = box_intersection(swept[start:stop], swept[columns])
        if metric == "ios":
            denominator = torch.minimum(areas[start:stop, None], areas[None, columns])
        else:
            denominator = areas[start:stop, None] + areas[None, columns] - inter
        i, j = (inter / denominator.clamp(min=1e-9) > match_threshold).nonzero(as_tuple=True)
        i, j = by_x[i + start], by_x[j + start]
        keep = i != j
        first.append(torch.minimum(i, j)[keep].numpy())
        second.append(torch.maximum(i, j)[keep].numpy())
    first, second = np.concatenate(first), np.concatenate(second)
    order = np.lexsort((second, first))
    pairs = np.unique(np.stack([first[order], second[order]]), axis=1)  # a pair met from both sides counts once
    return pairs[0], pairs[1]


def _groups(boxes: torch.Tensor, metric: MatchMetric, match_threshold: float) -> list[tuple[int, torch.Tensor]]:
    """Greedy grouping of score-sorted boxes: each box not yet taken leads the group of untaken boxes it matches."""
    count = len(boxes)
    first, second = _matching_pairs(boxes, metric, match_threshold)
    bounds = np.searchsorted(first, np.arange(count + 1))
    taken = np.zeros(count, dtype=bool)
    groups = []
    for leader in range(count):
        if taken[leader]:
            continue
        candidates = second[bounds[leader] : bounds[leader + 1]]
        members = candidates[~taken[candidates]]
        taken[members] = True
        groups.append((leader, torch.from_numpy(members)))
    return groups


def merge_detections(
    detections: Detections,
    merge: Merge = "nmm",
    match_metric: MatchMetric = "ios",
    match_threshold: float = 0.5,
) -> Detections:
    """Merge overlapping detections of the same class (``scores`` (n,), ``labels`` (n,), ``boxes`` (n, 4) xyxy).

    ``"nms"`` keeps each group's best box; ``"nmm"`` gives it the union of the group's boxes (and the best score).
    Groups form greedily by score: a box joins the best-scoring untaken box it matches (``match_metric`` above
    ``match_threshold``). Returns the merged detections, best score first.
    """
    if merge not in ("nms", "nmm"):
        raise ValueError(f"merge must be 'nms' or 'nmm', got {merge!r}")
    if match_metric not in ("ios", "iou"):
        raise ValueError(f"match_metric must be 'ios' or 'iou', got {match_metric!r}")
    scores, labels, boxes = detections["scores"], detections["labels"], detections["boxes"].float()
    out_scores, out_labels, out_boxes = [], [], []
    for label in labels.unique().tolist():
        index = (labels == label).nonzero().flatten()
        index = index[scores[index].argsort(descending=True, stable=True)]
        class_boxes = boxes[index]
        for leader, members in _groups(class_boxes, match_metric, match_threshold):
            box = class_boxes[leader]
            if merge == "nmm" and len(members):
                group = torch.cat([box[None], class_boxes[members]])
                box = torch.cat([group[:, :2].min(0).values, group[:, 2:].max(0).values])
            out_scores.append(scores[index[leader]])
            out_labels.append(label)
            out_boxes.append(box)
    if not out_scores:
        return _empty()
    result_scores = torch.stack(out_scores)
    order = result_scores.argsort(descending=True, stable=True)
    return {
        "scores": result_scores[order],
        "labels": torch.as_tensor(out_labels, dtype=torch.int64)[order],
        "boxes": torch.stack(out_boxes)[order],
    }


def decode_once(image: Any, max_image_pixels: int | None) -> Any:
    """A path, bytes or lazily opened PIL image -> a decoded image (one copy); arrays and tensors pass through."""
    if isinstance(image, (str, os.PathLike, bytes, dict)):
        return decode_large_image(image, max_image_pixels=max_image_pixels)
    if isinstance(image, PIL.Image.Image) and image.im is None:  # opened, not decoded yet
        return decode_large_image(image, max_image_pixels=max_image_pixels)
    return image


def _crop(image: Any, window: tuple[int, int, int, int]) -> Any:
    x0, y0, x1, y1 = window
    if isinstance(image, PIL.Image.Image):
        return image.crop(window)
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] in (1, 3, 4):
        return image[:, y0:y1, x0:x1]
    return image[y0:y1, x0:x1]


def _downscaled(image: Any, longest: int) -> tuple[Any, float]:
    """``image`` with its longest side at most ``longest`` (PIL images only; others as they are) and the scale."""
    height, width = image_size(image)
    scale = longest / max(height, width)
    if scale >= 1 or not isinstance(image, PIL.Image.Image):
        return image, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, PIL.Image.BILINEAR, reducing_gap=2.0), scale


def _as_detector(model: Any, processor: Any) -> Detector:
    if isinstance(model, torch.nn.Module):
        if processor is None:
            raise ValueError("sliced_detection: a model needs its image processor (or pass a Detector)")
        return TorchDetector(model, processor)
    if not callable(model) or not hasattr(model, "id2label"):
        raise TypeError(f"sliced_detection takes a Detector or a model and its processor, got {type(model).__name__}")
    return model


def sliced_detection(
    model: Any,
    processor: Any = None,
    image: Any = None,
    *,
    tile_size: int = 512,
    overlap: float = 0.2,
    batch_size: int = 8,
    full_image_pass: bool = True,
    full_image_size: int = 1024,
    merge: Merge = "nmm",
    match_metric: MatchMetric = "ios",
    match_threshold: float = 0.5,
    threshold: float = 0.3,
    max_image_pixels: int | None = None,
) -> Detections:
    """Detections of one (large) image by sliced inference; see the module docstring.

    Args:
        model: a :class:`Detector`, or a detr_hf model with ``processor`` (its image processor).
        image: a path, bytes, PIL image, (H, W, C) array or (C, H, W) tensor.
        tile_size, overlap: the tile grid (:func:`detr_hf.tiles.tile_windows`).
        batch_size: tiles per forward pass; peak memory grows with it, not with the image.
        full_image_pass, full_image_size: also detect on the whole image downscaled so its longest side is
            ``full_image_size`` (PIL images; skipped when the image is not larger).
        merge, match_metric, match_threshold: how overlapping detections of one class are merged.
        threshold: the detector's score threshold.
        max_image_pixels: refuse larger images (None: no limit; PIL's bomb check is replaced by it).

    Returns ``{"scores" (n,), "labels" (n,), "boxes" (n, 4) xyxy image pixels}``, best score first. When one
    tile covers the image, the result is the detector's on the whole image, unmerged (as plain inference).
    """
    if image is None and processor is not None and not isinstance(model, torch.nn.Module):
        processor, image = None, processor  # sliced_detection(detector, image)
    if image is None:
        raise ValueError("sliced_detection: no image given")
    detector = _as_detector(model, processor)
    image = decode_once(image, max_image_pixels)
    height, width = image_size(image)
    windows = tile_windows(width, height, tile_size, overlap)
    if len(windows) == 1:
        return detector([image], threshold=threshold)[0]
    parts: list[Detections] = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        results = detector([_crop(image, window) for window in batch], threshold=threshold)
        for (x0, y0, _, _), result in zip(batch, results):
            shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
            parts.append({**result, "boxes": result["boxes"].float().cpu() + shift})
    if full_image_pass:
        small, scale = _downscaled(image, full_image_size)
        if scale < 1:
            result = detector([small], threshold=threshold)[0]
            parts.append({**result, "boxes": result["boxes"].float().cpu() / scale})
    joined = {
        "scores": torch.cat([p["scores"].float().cpu() for p in parts]),
        "labels": torch.cat([p["labels"].long().cpu() for p in parts]),
        "boxes": torch.cat([p["boxes"] for p in parts]),
    }
    merged = merge_detections(joined, merge, match_metric, match_threshold)
    merged["boxes"][:, 0::2] = merged["boxes"][:, 0::2].clamp(0, width)
    merged["boxes"][:, 1::2] = merged["boxes"][:, 1::2].clamp(0, height)
    return merged


class SlicedDetector:
    """A :class:`Detector` that runs ``detector`` by sliced inference on each image (options: :func:`sliced_detection`).

    It is itself a Detector, so ``detr-hf evaluate --slice`` and :func:`detr_hf.evaluation.evaluate_images` score
    it on full images like any other.
    """

    def __init__(self, detector: Any, processor: Any = None, **options: Any):
        self.detector = _as_detector(detector, processor)
        self.id2label = self.detector.id2label
        self.options = options
        unknown = set(options) - set(sliced_detection.__kwdefaults__) - {"threshold"}
        if unknown:
            raise TypeError(f"SlicedDetector: unknown option(s) {sorted(unknown)}")

    def __call__(self, images: Sequence[Any], threshold: float = 0.5) -> list[Detections]:
        options = {**self.options, "threshold": threshold}
        return [sliced_detection(self.detector, None, image, **options) for image in images]
