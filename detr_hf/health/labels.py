"""Label health of a detection dataset, read from its Arrow columns (no image is decoded).

Broken labels (``--strict`` fails on them): boxes with no area (or not finite), thinner than a pixel, reaching
outside the image, and duplicate labels (two boxes of one class in one image with IoU above 0.9). Warnings: boxes
whose longest side, at the training scale, is below the model's stride (one feature cell: DETR's single level is
stride 32, Deformable DETR's finest 8), extreme aspect ratios, images with more objects than the model has queries,
and class imbalance. Crowd (ignore) regions are only checked for area and extent. Rows are read in batches, and box
sizes kept as histogram counts, so memory does not grow with the dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

from ..data.schema import class_names_of

BROKEN = ("zero_area", "subpixel", "outside_image", "duplicate_label")
WARNINGS = ("below_stride", "extreme_aspect", "over_query_budget")
DESCRIPTIONS = {
    "zero_area": "box without area (width or height <= 0, or not finite)",
    "subpixel": "box thinner than one pixel",
    "outside_image": "box reaching outside the image",
    "duplicate_label": "two boxes of one class in one image, IoU > {iou}",
    "below_stride": "longest side below the stride ({stride} px) at the training scale",
    "extreme_aspect": "aspect ratio above {aspect}:1",
    "over_query_budget": "image with more objects than the model's {queries} queries",
}
SIDE_BINS = np.geomspace(0.25, 4096, 57)  # box side at the training scale, for the size histogram
MAX_EXAMPLES = 200  # findings listed per kind; counts stay exact
_ROWS = 2048


@dataclass
class LabelSettings:
    """What the checks compare against: the model's stride and queries, the training resize, the limits."""

    stride: int = 32
    shortest_edge: int = 800
    longest_edge: int | None = 1333
    num_queries: int = 100
    duplicate_iou: float = 0.9
    max_aspect: float = 10.0
    outside_tolerance: float = 0.5  # pixels; boxes are clipped at conversion, this is float noise


@dataclass
class LabelHealth:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BROKEN + WARNINGS, 0))
    examples: dict[str, list[dict]] = field(default_factory=lambda: {k: [] for k in BROKEN + WARNINGS})
    images_per_class: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    boxes_per_class: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> boxes
    objects_per_image: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> max, p99, mean
    side_histogram: dict[str, list[int]] = field(default_factory=dict)  # split -> counts over SIDE_BINS
    boxes: int = 0
    crowd: int = 0
    learnable_at: dict[str, int] | None = None  # training resize at which 90% of the below-stride boxes reach it

    def add(self, kind: str, example: dict) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < MAX_EXAMPLES:
            self.examples[kind].append(example)

    def imbalance(self, split: str | None = None) -> float | None:
        """Boxes of the most common class over those of the rarest one present (``split`` or all splits)."""
        per_class = self._total_boxes() if split is None else self.boxes_per_class.get(split, {})
        present = [n for n in per_class.values() if n > 0]
        return max(present) / min(present) if present else None

    def _total_boxes(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for per_class in self.boxes_per_class.values():
            for name, n in per_class.items():
                total[name] = total.get(name, 0) + n
        return total

    @property
    def broken(self) -> int:
        return sum(self.counts[k] for k in BROKEN)


def training_scale(width: np.ndarray, height: np.ndarray, settings: LabelSettings) -> np.ndarray:
    """The factor the processor resizes each image by: shortest side to ``shortest_edge``, longest capped."""
    short, long = np.minimum(width, height).astype(float), np.maximum(width, height).astype(float)
    scale = settings.shortest_edge / np.maximum(short, 1)
    if settings.longest_edge:
        scale = np.minimum(scale, settings.longest_edge / np.maximum(long, 1))
    return scale


def check_labels(splits: dict[str, Dataset], settings: LabelSettings) -> LabelHealth:
    """Label health of every split (see the module docstring)."""
    health = LabelHealth()
    needed: list[np.ndarray] = []  # per below-stride box, the factor its image would need on top of the resize
    for split, dataset in splits.items():
        names = class_names_of(dataset)
        health.images_per_class[split] = dict.fromkeys(names, 0)
        health.boxes_per_class[split] = dict.fromkeys(names, 0)
        histogram = np.zeros(len(SIDE_BINS) - 1, np.int64)
        per_image_counts: list[np.ndarray] = []
        table = dataset.select_columns(["width", "height", "file_name", "objects"]).with_format("arrow")
        for start in range(0, len(dataset), _ROWS):
            batch = table[start : start + _ROWS]
            lengths = _check_batch(batch, start, split, names, settings, health, histogram, needed)
            per_image_counts.append(lengths)
        counts = np.concatenate(per_image_counts) if per_image_counts else np.zeros(0, np.int64)
        health.objects_per_image[split] = {
            "max": int(counts.max()) if len(counts) else 0,
            "p99": float(np.percentile(counts, 99)) if len(counts) else 0.0,
            "mean": float(counts.mean()) if len(counts) else 0.0,
        }
        health.side_histogram[split] = histogram.tolist()
    if needed:
        factor = float(np.percentile(np.concatenate(needed), 90))
        health.learnable_at = {
            "shortest_edge": math.ceil(settings.shortest_edge * factor),
            "longest_edge": math.ceil(settings.longest_edge * factor) if settings.longest_edge else None,
        }
    return health


def _column(objects, key: str, dtype, fill: float = 0) -> np.ndarray:
    if key not in objects.type.names:
        return np.full(int(pc.sum(pc.list_value_length(objects.field("bbox"))).as_py() or 0), fill, dtype)
    values = pc.list_flatten(objects.field(key))
    return values.fill_null(fill).to_numpy(zero_copy_only=False).astype(dtype)


def _check_batch(batch, start, split, names, settings, health, histogram, needed) -> np.ndarray:
    """Checks the rows of one Arrow batch; returns the number of (non-crowd) objects of each row."""
    objects = batch.column("objects").combine_chunks()
    lengths = pc.list_value_length(objects.field("bbox")).fill_null(0).to_numpy(zero_copy_only=False)
    lengths = lengths.astype(np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    bbox = pc.list_flatten(pc.list_flatten(objects.field("bbox"))).to_numpy(zero_copy_only=False)
    bbox = bbox.astype(np.float64).reshape(-1, 4)
    labels = _column(objects, "category", np.int64, -1)
    crowd = _column(objects, "iscrowd", np.int64) > 0
    width = batch.column("width").to_numpy(zero_copy_only=False).astype(np.float64)
    height = batch.column("height").to_numpy(zero_copy_only=False).astype(np.float64)
    file_names = batch.column("file_name").to_pylist()
    first_box = np.concatenate([[0], np.cumsum(lengths)])
    health.boxes += len(bbox)
    health.crowd += int(crowd.sum())

    def where(k: int, **extra) -> dict:
        r = int(row[k])
        return {
            "split": split,
            "row": start + r,
            "file_name": file_names[r],
            "box": int(k - first_box[r]),
            "category": names[labels[k]] if 0 <= labels[k] < len(names) else int(labels[k]),
            "bbox": [round(float(v), 2) for v in bbox[k]],
            **extra,
        }

    x, y, w, h = bbox.T
    finite = np.isfinite(bbox).all(axis=1)
    zero = ~finite | (w <= 0) | (h <= 0)
    for k in np.flatnonzero(zero):
        health.add("zero_area", where(k))
    for k in np.flatnonzero(~zero & ((w < 1) | (h < 1))):
        health.add("subpixel", where(k))
    tol = settings.outside_tolerance
    outside = finite & ((x < -tol) | (y < -tol) | (x + w > width[row] + tol) | (y + h > height[row] + tol))
    for k in np.flatnonzero(outside):
        health.add("outside_image", where(k, image_size=[int(width[row[k]]), int(height[row[k]])]))
    valid = ~zero & ~crowd
    scale = training_scale(width, height, settings)[row]
    side = np.maximum(w, h) * scale
    histogram += np.histogram(side[valid], SIDE_BINS)[0]
    small = valid & (side < settings.stride)
    for k in np.flatnonzero(small):
        health.add("below_stride", where(k, side_at_training_scale=round(float(side[k]), 2)))
    if small.any():
        needed.append(settings.stride / side[small])
    aspect = np.where(valid, np.maximum(w, h) / np.where(valid, np.minimum(w, h), 1), 0)
    for k in np.flatnonzero(aspect > settings.max_aspect):
        health.add("extreme_aspect", where(k, aspect=round(float(aspect[k]), 1)))
    _duplicates(bbox, labels, row, valid, settings.duplicate_iou, health, where)
    per_image = np.bincount(row[~crowd], minlength=len(lengths))
    for r in np.flatnonzero(per_image > settings.num_queries):
        health.add(
            "over_query_budget",
            {"split": split, "row": start + int(r), "file_name": file_names[r], "objects": int(per_image[r])},
        )
    known = (labels >= 0) & (labels < len(names))
    boxes = np.bincount(labels[known], minlength=len(names))
    pairs = np.unique(np.stack([row[known], labels[known]], axis=1), axis=0) if known.any() else np.zeros((0, 2), int)
    images = np.bincount(pairs[:, 1], minlength=len(names))
    for name, nb, ni in zip(names, boxes, images):
        health.boxes_per_class[split][name] += int(nb)
        health.images_per_class[split][name] += int(ni)
    return per_image


def _duplicates(bbox, labels, row, valid, threshold, health, where) -> None:
    """Pairs of valid boxes sharing image and class with IoU above ``threshold``; the later box is reported."""
    index = np.flatnonzero(valid)
    if len(index) < 2:
        return
    order = index[np.lexsort((labels[index], row[index]))]
    key = row[order] * (labels.max() + 2) + labels[order]
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    sizes = np.diff(np.concatenate([starts, [len(order)]]))
    group_end = np.repeat(starts + sizes, sizes)  # per sorted box, the end of its group
    following = group_end - np.arange(len(order)) - 1  # boxes after it in its group
    if not following.sum():
        return
    first = np.repeat(np.arange(len(order)), following)
    offsets = np.arange(len(first)) - np.repeat(np.cumsum(following) - following, following)
    second = first + 1 + offsets
    a, b = bbox[order[first]], bbox[order[second]]
    ix = np.clip(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    iou = inter / (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter)
    reported: set[int] = set()
    for p in np.flatnonzero(iou > threshold):
        i, j = int(order[first[p]]), int(order[second[p]])
        later, earlier = max(i, j), min(i, j)
        if later in reported:
            continue
        reported.add(later)
        health.add(
            "duplicate_label",
            where(later, duplicate_of=int(earlier - (later - where(later)["box"])), iou=round(float(iou[p]), 3)),
        )
