"""A procedurally generated shapes dataset in the package schema: the quickstart's, the tests' and the benchmarks' data.

Each image has a textured background (value noise, gradients, stripes, blurred blotches, mixed, with thin unlabeled
clutter lines and sensor noise) and 1..N filled shapes of random size, rotation, colour and fill pattern drawn on top of
each other. Colour and fill are drawn independently of the class, so only shape tells the classes apart.

Labelling rule (occlusion and truncation): a shape's pixels are the pixels where it covers at least half of the pixel
(it is drawn anti-aliased) and that no later shape covers. A shape is placed only if afterwards it and every shape
already placed keep at least ``min_visibility`` of their pixels (pixels pushed outside the image count as hidden);
otherwise the placement is retried elsewhere and, if that keeps failing, the shape is not drawn at all. So every
shape in an image is labelled, none is hidden by more than ``1 - min_visibility``, and no unlabelled fragment exists.
``bbox`` is the tight box of the shape's visible pixels and ``area`` their count (COCO's modal box and mask area).

Every image has its own random generator seeded from ``(seed, split, index)``, so images do not depend on how many
were generated before them, nor on ``num_proc``; the same arguments give byte-identical PNGs.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from datasets import Dataset, DatasetDict
from PIL import Image

from . import synthetic_drawing
from .schema import detection_features
from .synthetic_drawing import AVAILABLE_SHAPES, OUTLINES, background, fill, luma, random_color, shape_alpha

__all__ = [
    "AVAILABLE_SHAPES",
    "SyntheticImage",
    "SyntheticShapesConfig",
    "generate_image",
    "image_rng",
    "make_synthetic_dataset",
]

_CHUNK = 64  # images per generator shard; shards are what ``num_proc`` distributes
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_MIN_CONTRAST = 60.0  # RGB distance between a shape's colour and the mean of what it covers
_MIN_GRAY_CONTRAST = 28.0  # same, on luma, when generating grayscale images


# ------------------------------------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class SyntheticShapesConfig:
    """What :func:`generate_image` draws. See the module docstring for the labelling rule."""

    height: int = 128
    width: int = 128
    classes: tuple[str, ...] = ("circle", "square", "triangle")
    min_objects: int = 1
    max_objects: int = 6
    min_size: float = 10.0
    max_size: float = 44.0
    size_sampling: str = "log-uniform"
    min_visibility: float = 0.5
    grayscale: bool = False
    placement_tries: int = 30

    def __post_init__(self) -> None:
        unknown = [name for name in self.classes if name not in OUTLINES]
        if unknown or not self.classes:
            raise ValueError(f"Unknown shape class(es) {unknown} (or none given); available: {list(AVAILABLE_SHAPES)}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"Duplicate class names in {self.classes}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(f"Need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 2 <= self.min_size <= self.max_size:
            raise ValueError(f"Need 2 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.max_size > min(self.height, self.width):
            raise ValueError(f"max_size {self.max_size} exceeds the image side {min(self.height, self.width)}")
        if self.size_sampling not in ("log-uniform", "uniform"):
            raise ValueError(f"size_sampling must be 'log-uniform' or 'uniform', got {self.size_sampling!r}")
        if not 0 < self.min_visibility <= 1:
            raise ValueError(f"min_visibility must be in (0, 1], got {self.min_visibility}")


@dataclass
class SyntheticImage:
    """One generated image: ``image`` is (H, W, 3) uint8 RGB, or (H, W) when grayscale; one row per object.

    ``instance_map`` gives each object's visible pixels (instance masks for free, and what the labels derive from).
    """

    image: np.ndarray
    boxes: np.ndarray  # (N, 4) float32 COCO [x, y, w, h] of the visible pixels
    categories: np.ndarray  # (N,) int64 indices into config.classes
    areas: np.ndarray  # (N,) float32 visible pixel counts
    visibility: np.ndarray  # (N,) float32 visible share of each shape's pixels
    truncated: np.ndarray  # (N,) bool: part of the shape lies outside the image
    instance_map: np.ndarray  # (H, W) int16: index of the object owning each pixel, -1 for background


def _sample_size(rng: np.random.Generator, config: SyntheticShapesConfig) -> float:
    if config.size_sampling == "uniform":
        return float(rng.uniform(config.min_size, config.max_size))
    return float(math.exp(rng.uniform(math.log(config.min_size), math.log(config.max_size))))


def _contrasting_color(rng: np.random.Generator, under: np.ndarray, grayscale: bool) -> np.ndarray:
    """A random colour that stands out from ``under`` (the mean colour of what the shape covers)."""
    best, best_score = None, -1.0
    for _ in range(12):
        color = random_color(rng)
        score = float(np.linalg.norm(color - under))
        if grayscale:
            score = min(score, abs(float(luma(color) - luma(under))) * _MIN_CONTRAST / _MIN_GRAY_CONTRAST)
        if score >= _MIN_CONTRAST:
            return color
        if score > best_score:
            best, best_score = color, score
    return best


def generate_image(rng: np.random.Generator, config: SyntheticShapesConfig) -> SyntheticImage:
    """Draw one image and its labels with ``rng`` (see the module docstring for what is drawn and labelled)."""
    height, width = config.height, config.width
    canvas = background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int16)  # index of the shape that owns each pixel, -1: background
    target = int(rng.integers(config.min_objects, config.max_objects + 1))
    full_counts: list[int] = []  # pixels of each placed shape, including those outside the image
    visible_counts: list[int] = []
    categories: list[int] = []
    regions: list[tuple[int, int, int, int]] = []  # clipped (y0, y1, x0, x1) of each placed shape
    truncated: list[bool] = []

    attempts = 0
    while len(categories) < target and attempts < config.placement_tries * max(target, 1):
        attempts += 1
        category = int(rng.integers(len(config.classes)))
        alpha = shape_alpha(config.classes[category], _sample_size(rng, config), rng)
        mask = alpha >= 0.5
        full = int(mask.sum())
        ah, aw = alpha.shape
        placed = False
        for _ in range(config.placement_tries):
            # Up to a third of the shape may hang outside the image; the visibility test decides.
            top = int(rng.integers(-ah // 3, height - 2 * ah // 3 + 1))
            left = int(rng.integers(-aw // 3, width - 2 * aw // 3 + 1))
            y0, y1, x0, x1 = max(top, 0), min(top + ah, height), max(left, 0), min(left + aw, width)
            if y1 <= y0 or x1 <= x0:
                continue
            local = mask[y0 - top : y1 - top, x0 - left : x1 - left]
            if local.sum() < config.min_visibility * full:
                continue
            covered = np.bincount(owner[y0:y1, x0:x1][local] + 1, minlength=len(categories) + 1)[1:]
            remaining = np.asarray(visible_counts, dtype=np.int64) - covered
            if np.any(remaining < config.min_visibility * np.asarray(full_counts, dtype=np.float64)):
                continue
            placed = True
            break
        if not placed:
            continue

        local_alpha = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
        under = canvas[y0:y1, x0:x1]
        color = _contrasting_color(rng, under[local].mean(axis=0), config.grayscale)
        texture = fill(rng, color, y1 - y0, x1 - x0)
        canvas[y0:y1, x0:x1] = under + local_alpha * (texture - under)
        owner[y0:y1, x0:x1][local] = len(categories)
        visible_counts = [*list(np.asarray(visible_counts, dtype=np.int64) - covered), int(local.sum())]
        full_counts.append(full)
        categories.append(category)
        regions.append((y0, y1, x0, x1))
        truncated.append(bool(local.sum() < full))

    if len(categories) < config.min_objects:
        raise RuntimeError(
            f"Could only place {len(categories)} of at least {config.min_objects} shapes in a {height}x{width} image "
            f"with sizes {config.min_size}-{config.max_size} and min_visibility {config.min_visibility}; "
            "use fewer or smaller objects or larger images."
        )

    # Sensor-like finish over everything: optional slight blur, then noise.
    if rng.random() < 0.25:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.4, 0.9))
    canvas = canvas + np.float32(rng.uniform(0.0, 10.0)) * rng.standard_normal(size=canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    if config.grayscale:
        image = np.clip(np.rint(luma(image.astype(np.float32))), 0, 255).astype(np.uint8)

    boxes = np.zeros((len(categories), 4), dtype=np.float32)
    for index, (y0, y1, x0, x1) in enumerate(regions):
        ys, xs = np.nonzero(owner[y0:y1, x0:x1] == index)
        boxes[index] = (x0 + xs.min(), y0 + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    visible = np.asarray(visible_counts, dtype=np.float32)
    return SyntheticImage(
        image=image,
        boxes=boxes,
        categories=np.asarray(categories, dtype=np.int64),
        areas=visible,
        visibility=visible / np.maximum(np.asarray(full_counts, dtype=np.float32), 1.0),
        truncated=np.asarray(truncated, dtype=bool),
        instance_map=owner,
    )


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of every other image's."""
    return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _generate_examples(chunks: list[tuple[int, int]], split: str, seed: int, config: dict) -> Iterator[dict]:
    """``Dataset.from_generator`` body: the examples of the index ranges ``chunks``, in order."""
    shapes_config = SyntheticShapesConfig(**config)
    max_objects = max(shapes_config.max_objects, 1)
    for start, stop in chunks:
        for index in range(start, stop):
            sample = generate_image(image_rng(seed, split, index), shapes_config)
            image_id = index + 1
            num = len(sample.categories)
            yield {
                "image_id": image_id,
                "image": {"bytes": _encode_png(sample.image), "path": None},
                "width": shapes_config.width,
                "height": shapes_config.height,
                "file_name": f"synthetic/{split}/{image_id:06d}.png",
                "objects": {
                    "id": [index * max_objects + k + 1 for k in range(num)],
                    "area": sample.areas.tolist(),
                    "bbox": sample.boxes.tolist(),
                    "category": sample.categories.tolist(),
                    "iscrowd": [0] * num,
                    "difficult": [0] * num,
                    "truncated": sample.truncated.astype(int).tolist(),
                },
            }


def _source_digest() -> str:
    """Changes whenever the generator's code does, so a cached dataset is never reused across generator changes."""
    sources = (Path(__file__), Path(synthetic_drawing.__file__))
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]


def make_synthetic_dataset(
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int | tuple[int, int] = 128,
    min_objects: int = 1,
    max_objects: int = 6,
    min_size: float = 10,
    max_size: float = 44,
    classes: Sequence[str] = ("circle", "square", "triangle"),
    seed: int = 0,
    num_proc: int | None = None,
    *,
    num_test: int = 0,
    min_visibility: float = 0.5,
    size_sampling: str = "log-uniform",
    grayscale: bool = False,
    cache_dir: str | None = None,
    keep_in_memory: bool = False,
) -> DatasetDict:
    """Generate the shapes dataset as a ``DatasetDict`` with "train" and "validation" (and "test" if ``num_test``).

    Args:
        num_train, num_val, num_test: images per split. Splits use separate random streams, so changing one size
            leaves the other splits' images unchanged.
        image_size: side of the square images, or ``(height, width)``.
        min_objects, max_objects: objects per image, drawn uniformly (fewer only if placement keeps failing).
        min_size, max_size: longest side in pixels of a shape's full (unoccluded) bounding box.
        classes: shape names, a subset of ``AVAILABLE_SHAPES``; label ids follow this order.
        seed: the dataset's seed; images are byte-identical for the same arguments, whatever ``num_proc``.
        num_proc: worker processes for generation.
        min_visibility: the least share of a shape's pixels left visible (see the module docstring).
        size_sampling: "log-uniform" (default: as many 10-20 px as 20-40 px shapes) or "uniform".
        grayscale: gray images, stored as single-channel PNGs (the schema's Image feature still decodes them to RGB
            with three equal channels).
        cache_dir, keep_in_memory: passed to ``Dataset.from_generator``; the cache key covers every argument and
            this module's source.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    config = SyntheticShapesConfig(
        height=int(height),
        width=int(width),
        classes=tuple(classes),
        min_objects=min_objects,
        max_objects=max_objects,
        min_size=float(min_size),
        max_size=float(max_size),
        size_sampling=size_sampling,
        min_visibility=float(min_visibility),
        grayscale=grayscale,
    )
    features = detection_features(list(config.classes))
    splits = {}
    for split, count in (("train", num_train), ("validation", num_val), ("test", num_test)):
        if count < 0:
            raise ValueError(f"num_{split} must be >= 0, got {count}")
        if split == "test" and count == 0:
            continue
        if count == 0:  # the generator builder cannot make an empty split
            splits[split] = Dataset.from_dict({name: [] for name in features}, features=features, split=split)
            continue
        chunks = [(start, min(start + _CHUNK, count)) for start in range(0, count, _CHUNK)]
        key = json.dumps([asdict(config), split, count, seed, _source_digest()], sort_keys=True)
        splits[split] = Dataset.from_generator(
            _generate_examples,
            features=features,
            gen_kwargs={"chunks": chunks, "split": split, "seed": seed, "config": asdict(config)},
            num_proc=num_proc if num_proc and num_proc > 1 and len(chunks) > 1 else None,
            split=split,
            cache_dir=cache_dir,
            keep_in_memory=keep_in_memory,
            fingerprint=hashlib.sha256(key.encode()).hexdigest()[:32],
        )
    return DatasetDict(splits)
