"""Large synthetic scenes: aerial-like images of 1,536-2,048 px with 50-300 objects of 6-32 px.

The shapes, textured backgrounds and labelling rule are :mod:`detr_hf.data.synthetic`'s (each object keeps at least
``min_visibility`` of its pixels; ``bbox`` is its visible extent); only the scale differs: each scene draws its own
width and height, so any fixed tile grid cuts some objects. Deterministic: image ``i`` of a split depends only on
``(seed, split, i)``, and the same arguments give byte-identical PNGs. The benchmark of tiled training and sliced
inference (``benchmarks/bench_large_images.py``) and the tests use it.

from detr_hf.data.synthetic_scenes import make_synthetic_scenes
scenes = make_synthetic_scenes(num_train=16, num_val=4)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from datasets import Dataset, DatasetDict

from .schema import detection_features
from .synthetic import SyntheticShapesConfig, _encode_png, _source_digest, generate_image, image_rng

__all__ = ["make_synthetic_scenes"]


def _scenes(split: str, count: int, seed: int, sides: tuple[int, int], config: dict) -> Iterator[dict]:
    base = SyntheticShapesConfig(**config)
    for index in range(count):
        rng = image_rng(seed, split, index)
        height, width = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
        sample = generate_image(rng, replace(base, height=height, width=width))
        num = len(sample.categories)
        yield {
            "image_id": index + 1,
            "image": {"bytes": _encode_png(sample.image), "path": None},
            "width": width,
            "height": height,
            "file_name": f"scenes/{split}/{index + 1:06d}.png",
            "objects": {
                "id": [index * 1000 + k + 1 for k in range(num)],
                "area": sample.areas.tolist(),
                "bbox": sample.boxes.tolist(),
                "category": sample.categories.tolist(),
                "iscrowd": [0] * num,
                "difficult": [0] * num,
                "truncated": sample.truncated.astype(int).tolist(),
            },
        }


def make_synthetic_scenes(
    num_train: int = 16,
    num_val: int = 4,
    *,
    min_side: int = 1536,
    max_side: int = 2048,
    min_objects: int = 50,
    max_objects: int = 300,
    min_size: float = 6,
    max_size: float = 32,
    classes: Sequence[str] = ("circle", "square", "triangle"),
    seed: int = 0,
    num_test: int = 0,
    cache_dir: str | None = None,
    keep_in_memory: bool = False,
) -> DatasetDict:
    """Large scenes as a ``DatasetDict`` ("train", "validation", and "test" if ``num_test``).

    Each scene's height and width are drawn from ``min_side..max_side``; ``min_objects..max_objects`` shapes of
    ``min_size..max_size`` px (longest side, log-uniform) in ``classes``. Cached like ``make_synthetic_dataset``.
    """
    if not 1 <= min_side <= max_side:
        raise ValueError(f"Need 1 <= min_side <= max_side, got {min_side}, {max_side}")
    if max_objects > 999:
        raise ValueError(f"max_objects must be below 1000 (object ids are image * 1000 + k), got {max_objects}")
    config = SyntheticShapesConfig(
        height=min_side,
        width=min_side,
        classes=tuple(classes),
        min_objects=min_objects,
        max_objects=max_objects,
        min_size=float(min_size),
        max_size=float(max_size),
    )
    features = detection_features(list(config.classes))
    splits = {}
    for split, count in (("train", num_train), ("validation", num_val), ("test", num_test)):
        if count <= 0:
            continue
        digest = _source_digest() + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
        key = json.dumps([asdict(config), split, count, seed, min_side, max_side, digest], sort_keys=True)
        splits[split] = Dataset.from_generator(
            _scenes,
            features=features,
            gen_kwargs={
                "split": split,
                "count": count,
                "seed": seed,
                "sides": (min_side, max_side),
                "config": asdict(config),
            },
            split=split,
            cache_dir=cache_dir,
            keep_in_memory=keep_in_memory,
            fingerprint=hashlib.sha256(("scenes" + key).encode()).hexdigest()[:32],
        )
    return DatasetDict(splits)
