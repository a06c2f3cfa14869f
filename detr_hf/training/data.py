"""The training data of a run: augmentations seeded by data position (so resumes replay them) and its loader."""

from __future__ import annotations

import zlib
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from ..data.transforms import DetectionTransform, build_transforms, make_collate_fn, make_transform_fn
from ..families.loading import fit_pipeline_to_processor
from .config import TrainingConfig
from .tiling import tiled_loader_parts


class SeededTransform:
    """Augments a batch with a seed derived from (run seed, epoch, image ids): the same data position always gets the
    same augmentation, so a resumed run replays exactly what an uninterrupted one would have seen. The seed is set on
    every call, in DataLoader workers too (where it replaces the worker's own reseed)."""

    def __init__(self, transform: DetectionTransform, seed: int):
        self.transform, self.seed, self.epoch = transform, seed, 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        key = f"{self.seed}/{self.epoch}/{batch['image_id']}".encode()
        self.transform.set_random_seed(zlib.crc32(key))
        return self.transform(batch)


def train_dataloader(dataset: Dataset, processor: Any, config: TrainingConfig) -> tuple[DataLoader, SeededTransform]:
    """Shuffled, augmented (per ``config.augmentation``; "none": resize only) batches of the training split, and the
    transform, whose ``epoch`` the loop sets at the start of every epoch."""
    preset = "eval" if config.augmentation == "none" else config.augmentation
    pipeline = build_transforms(preset, config.scales, config.max_size, seed=config.seed)
    pipeline = fit_pipeline_to_processor(pipeline, processor)  # a fixed-size processor's models train at its size
    transform = SeededTransform(make_transform_fn(pipeline), config.seed)
    rows, sampler = tiled_loader_parts(dataset, transform, config)  # tiles when config.tiling is set
    loader = DataLoader(
        rows,
        batch_size=config.per_device_train_batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=make_collate_fn(processor),
        num_workers=config.num_workers,
        drop_last=True,
        # its own generator: creating an iterator must not draw from the global RNG (dropout's), or a resumed run
        # would see other dropout masks than the uninterrupted one
        generator=torch.Generator().manual_seed(config.seed),
    )
    return loader, transform
