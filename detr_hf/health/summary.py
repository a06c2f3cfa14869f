"""The paragraph the recipe prints at its start: label health and exact duplicates (cheap: no image is decoded), and
near duplicates too when the dataset is small enough for them to take a few seconds."""

from __future__ import annotations

import logging
import re
from typing import Any

from datasets import DatasetDict

from .check import check_dataset

logger = logging.getLogger("detr_hf.health")
# images: above these the summary skips near duplicates (decoding), then identical files (reading every file);
# detr-hf check searches both at any size
NEAR_DUPLICATES_UP_TO = 1000
EXACT_DUPLICATES_UP_TO = 20_000


def model_stride(config: Any) -> int:
    """The finest stride a model's config sees: its first backbone output (ResNet ``stageN`` -> 2^(N+1)); DETR's
    single level is 32, Deformable DETR's finest 8 (``stage2``). 32 when the config does not say."""
    backbone = getattr(config, "backbone_config", None)
    features = list(getattr(backbone, "out_features", None) or [])
    strides = [2 ** (int(m.group(1)) + 1) for f in features if (m := re.fullmatch(r"stage(\d+)", str(f)))]
    return min(strides) if strides else 32


def health_summary(
    dataset: DatasetDict,
    *,
    stride: int = 32,
    shortest_edge: int = 800,
    longest_edge: int | None = 1333,
    num_queries: int = 100,
    group_by: str | None = None,
    near_duplicates_up_to: int = NEAR_DUPLICATES_UP_TO,
    exact_duplicates_up_to: int = EXACT_DUPLICATES_UP_TO,
) -> str:
    """One paragraph: images per split, duplicates and leakage, broken labels, small boxes, imbalance, queries.
    Near duplicates are searched up to ``near_duplicates_up_to`` images, identical files up to
    ``exact_duplicates_up_to``."""
    total = sum(len(ds) for ds in dataset.values())
    near, exact = total <= near_duplicates_up_to, total <= exact_duplicates_up_to
    report = check_dataset(
        dataset,
        group_by=group_by,
        exact_duplicates=exact,
        near_duplicates=near,
        stride=stride,
        shortest_edge=shortest_edge,
        longest_edge=longest_edge,
        num_queries=num_queries,
    )
    d, labels = report.duplicates, report.labels
    parts = [", ".join(f"{n} {s}" for s, n in report.splits.items()) + " images"]
    if exact:
        dup = f"{d['exact_groups']} groups of identical files"
        dup += f", {d['near_groups']} of near duplicates" if near else " (near duplicates: run detr-hf check)"
    else:
        dup = f"duplicates not searched above {exact_duplicates_up_to} images (run detr-hf check)"
    parts.append(dup)
    if report.leakage and exact:
        parts.append(f"{report.leaked_images} validation/test images with a twin in train")
    if report.groups is not None:
        parts.append(f"{len(report.groups['spanning'])} groups spanning splits")
    parts.append(f"{labels.broken} broken boxes of {labels.boxes}")
    below = labels.counts["below_stride"]
    if below:
        learnable = (
            f", 90% learnable at shortest_edge {labels.learnable_at['shortest_edge']}" if labels.learnable_at else ""
        )
        parts.append(f"{below} boxes below the stride ({stride} px) at shortest_edge {shortest_edge}{learnable}")
    most = max((v["max"] for v in labels.objects_per_image.values()), default=0)
    parts.append(f"up to {most} objects per image for {num_queries} queries")
    ratio = labels.imbalance()
    if ratio is not None:
        parts.append(f"class imbalance {ratio:.1f}")
    verdict = "OK" if report.ok else "PROBLEMS: " + "; ".join(p.message for p in report.errors)
    return f"Dataset health ({report.seconds:.1f} s): " + "; ".join(parts) + f". {verdict}"


def log_dataset_health(config: Any, accelerator: Any, dataset: DatasetDict, model: Any) -> None:
    """The recipe's start: log :func:`health_summary` of the run's data on the main process (a failure is logged,
    never raised: the summary must not stop a run the user started)."""
    if not accelerator.is_main_process:
        return
    model_config = getattr(model, "config", None)
    try:
        text = health_summary(
            dataset,
            stride=model_stride(model_config),
            shortest_edge=max(config.scales),
            longest_edge=config.max_size,
            num_queries=getattr(model_config, "num_queries", 100),
            group_by=getattr(config, "group_by", None),
        )
    except Exception as e:  # a health summary that fails is reported, the run goes on
        logger.warning("dataset health summary failed: %s: %s", type(e).__name__, e)
        return
    logger.info(text)
