"""Dense scenes: objects per image (max, p99) against a model's query budget, read from the annotations alone.

A DETR finds at most ``num_queries`` objects in one input. ``detr-hf inspect`` and the recipe's start print the
counts and warn when an image (or, with tiling, a tile) may hold more objects than the model has queries. The answers:
train on tiles (each holds fewer objects; see :func:`detr_hf.data.tile_dataset`), or raise ``num_queries``
(``model_overrides: {num_queries: 300}``: a checkpoint's trained queries are kept and the new ones start as copies of
them), or both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

logger = logging.getLogger(__name__)

DEFAULT_NUM_QUERIES = 100  # DETR's


def objects_per_image(split: Dataset) -> np.ndarray:
    """Boxes per row (ignore regions excluded), from the Arrow column: no image is decoded."""
    if not len(split):
        return np.zeros(0, dtype=np.int64)
    objects = split.select_columns(["objects"]).with_format("arrow")[:].column("objects").combine_chunks()
    lengths = pc.list_value_length(objects.field("category")).to_numpy(zero_copy_only=False).astype(np.int64)
    crowd = objects.field("iscrowd")
    flat = pc.list_flatten(crowd).to_numpy(zero_copy_only=False).astype(np.float64)
    rows = pc.list_parent_indices(crowd).to_numpy(zero_copy_only=False)
    crowds = np.bincount(rows, weights=flat, minlength=len(lengths)).astype(np.int64)
    return lengths - crowds


@dataclass
class Density:
    """Objects per image (or tile) of a split against a query budget."""

    max: int
    p99: float
    mean: float
    num_queries: int
    unit: str = "image"

    @property
    def too_dense(self) -> bool:
        return self.max > self.num_queries

    def __str__(self) -> str:
        text = (f"objects per {self.unit}: max {self.max}, p99 {self.p99:.0f}, mean {self.mean:.1f} "
                f"(the model has {self.num_queries} queries)")  # fmt: skip
        if self.too_dense:
            text += (f"\nwarning: some {self.unit}s hold more objects than the model has queries ({self.max} > "
                     f"{self.num_queries}); it cannot find them all. Train on tiles (tiling: {{tile_size: 512}} in the "
                     "recipe, detr_hf.data.tile_dataset; tiles hold fewer objects each) and/or raise num_queries "
                     "(model_overrides: {num_queries: N}).")  # fmt: skip
        return text


def scene_density(counts: np.ndarray, num_queries: int = DEFAULT_NUM_QUERIES, unit: str = "image") -> Density:
    counts = np.asarray(counts, dtype=np.int64)
    if not counts.size:
        return Density(0, 0.0, 0.0, num_queries, unit)
    return Density(int(counts.max()), float(np.percentile(counts, 99)), float(counts.mean()), num_queries, unit)


def check_scene_density(
    split: Dataset, num_queries: int = DEFAULT_NUM_QUERIES, tiles: Dataset | None = None
) -> Density:
    """Log the split's objects per image (and per tile when ``tiles`` is its tile dataset) against ``num_queries``;
    a warning when the densest one exceeds it. Returns the density of what the model is trained on."""
    density = scene_density(objects_per_image(split), num_queries)
    logger.info("%s", str(density).splitlines()[0])
    if tiles is not None:
        density = scene_density(objects_per_image(tiles), num_queries, unit="tile")
        logger.info("%s", str(density).splitlines()[0])
    if density.too_dense:
        logger.warning("%s", str(density).splitlines()[1])
    return density
