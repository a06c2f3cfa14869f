"""The recipe's ``tiling`` option: train on native-resolution tiles, evaluate full images by sliced inference.

tiling: {tile_size: 512, overlap: 0.2, min_visibility: 0.3, empty_fraction: 0.1}

Training reads :func:`detr_hf.data.tile_dataset`'s tiles in :func:`~detr_hf.data.tiling.tile_order` (each large image
decoded once per epoch); evaluation runs :class:`~detr_hf.inference.SlicedDetector` on the evaluation split's full
images, with the same tile size and overlap, and COCO ``maxDets`` at the model's query budget.
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset

from ..data.density import check_scene_density
from ..data.tiling import TileSampler, tile_dataset, with_tile_transform
from .config import TrainingConfig

logger = logging.getLogger(__name__)

TILING_KEYS = ("tile_size", "overlap", "min_visibility", "empty_fraction")


def check_tiling(tiling: dict[str, Any] | None) -> None:
    """Reject unknown keys of the ``tiling`` option (a mapping of :data:`TILING_KEYS`)."""
    if tiling is None:
        return
    if not isinstance(tiling, dict):
        raise ValueError(f"tiling: expected a mapping like {{tile_size: 512, overlap: 0.2}}, got {tiling!r}")
    unknown = sorted(set(tiling) - set(TILING_KEYS))
    if unknown:
        raise ValueError(f"tiling: unknown key(s) {unknown}; known: {list(TILING_KEYS)}")


def tiled_split(split: Dataset, config: TrainingConfig) -> Dataset:
    """The training split as tiles (its tiling report logged)."""
    tiles = tile_dataset(split, **config.tiling, seed=config.seed)
    logger.info("%s", tiles.tiling_report)
    return tiles


def tiled_loader_parts(split: Dataset, transform: Any, config: TrainingConfig) -> tuple[Dataset, Any]:
    """``(dataset with transform, sampler)`` for the training DataLoader: tiles when ``config.tiling`` is set
    (read image by image), else ``split.with_transform(transform)`` and no sampler (shuffled)."""
    if not config.tiling:
        return split.with_transform(transform), None
    tiles = tiled_split(split, config)
    return with_tile_transform(tiles, transform), TileSampler(tiles, seed=config.seed)


def report_scene_density(config: TrainingConfig, split: Dataset, model: Any) -> None:
    """Log objects per image (and per tile when tiling) against the model's queries; warn when too dense."""
    num_queries = int(getattr(model.config, "num_queries", 100))
    tiles = tile_dataset(split, **config.tiling, seed=config.seed) if config.tiling else None
    check_scene_density(split, num_queries, tiles)


def evaluate_sliced(model: Any, processor: Any, ground_truth: Dataset, config: TrainingConfig, accelerator: Any):
    """COCO metrics of ``model`` on the full evaluation images by sliced inference (main process; ``(None, None)``
    elsewhere). Returns ``(metrics, evaluator)`` as ``evaluate_detector`` does."""
    from ..evaluation import evaluate_images, query_budget
    from ..inference import SlicedDetector, TorchDetector

    if not accelerator.is_main_process:
        return None, None
    model = accelerator.unwrap_model(model)
    was_training = model.training
    tiling = config.tiling
    detector = SlicedDetector(
        TorchDetector(model, processor),
        tile_size=tiling.get("tile_size", 512),
        overlap=tiling.get("overlap", 0.2),
        batch_size=config.per_device_eval_batch_size,
    )
    metrics, evaluator = evaluate_images(
        detector, ground_truth, batch_size=1, show_progress=False, max_detections=query_budget(model.config)
    )
    model.train(was_training)
    return metrics, evaluator
