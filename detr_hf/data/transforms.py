"""Box-aware augmentation presets (albumentations) and the glue from dataset rows to model batches.

Three steps, each usable alone:

1. :func:`build_transforms` builds an ``A.Compose`` for a preset ("train", "aerial", "medical", "eval") at given
   scales, from albumentations' transforms and ours (:mod:`.augmentations`). Boxes travel as COCO ``[x, y, w, h]`` with the label fields :data:`BBOX_LABEL_FIELDS`; a custom
   ``A.Compose`` works too if it uses :func:`bbox_params`.
2. :func:`make_transform_fn` wraps it for ``Dataset.with_transform``: rows of the package schema in, augmented
   ``image`` arrays and COCO-style ``annotations`` out, lazily, at every access.
3. :func:`make_collate_fn` batches those through an image processor into ``pixel_values``, ``pixel_mask``, ``labels``.

Boxes are only ever dropped by the augmentation itself (a crop or shift leaving less than ``min_visibility`` of a box
in the image). Invalid boxes (empty, non-finite, entirely outside the image) raise an error naming the image.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from PIL import Image

from ..imaging import GRAY_MODES, open_image, to_8bit, upright
from .augmentations import ObjectAwareRandomCrop, ResizeShortestEdge

__all__ = [
    "BBOX_LABEL_FIELDS",
    "PRESETS",
    "DetectionCollator",
    "DetectionTransform",
    "bbox_params",
    "build_transforms",
    "detr_scales",
    "make_collate_fn",
    "make_transform_fn",
]

PRESETS = ("train", "aerial", "medical", "eval")
BBOX_LABEL_FIELDS = ("category_ids", "box_indices")
# DETR's COCO recipe: shortest side drawn from 480..800 (step 32), longest side at most 1333; evaluation at 800.
DETR_SCALES = tuple(range(480, 801, 32))
DETR_MAX_SIZE = 1333


def detr_scales(shortest_edge: int = 800) -> tuple[list[int], int]:
    """DETR's multi-scale recipe shrunk or grown to an evaluation size: ``(scales, max_size)``.

    The scales run from 0.6x to 1x ``shortest_edge`` in 11 steps, and the longest side is capped at 1333/800 of it,
    so ``detr_scales(800)`` is exactly DETR's COCO setting and ``detr_scales(128)`` suits 128 px images.
    """
    if shortest_edge < 2:
        raise ValueError(f"shortest_edge must be at least 2, got {shortest_edge}")
    scales = sorted({max(1, round(shortest_edge * (0.6 + 0.04 * step))) for step in range(11)})
    return scales, round(shortest_edge * DETR_MAX_SIZE / 800)


def bbox_params(min_visibility: float = 0.0) -> A.BboxParams:
    """The ``BboxParams`` :func:`make_transform_fn` feeds: COCO boxes with :data:`BBOX_LABEL_FIELDS`."""
    return A.BboxParams(format="coco", label_fields=list(BBOX_LABEL_FIELDS), min_visibility=min_visibility)


def build_transforms(
    preset: str,
    scales: int | Sequence[int] | None = None,
    max_size: int | None = None,
    *,
    min_visibility: float = 0.25,
    crop_scale: tuple[float, float] | None = None,
    horizontal_flip: bool | None = None,
    seed: int | None = None,
) -> A.Compose:
    """An albumentations pipeline for ``preset``, operating on uint8 HWC images with COCO boxes.

    Presets:
        - ``"train"``: DETR's recipe: horizontal flip; with probability 0.5 a random-size crop keeping at least one
          object (:class:`ObjectAwareRandomCrop`, sides ``crop_scale`` of the image, default 0.5-1); multi-scale
          resize (:class:`ResizeShortestEdge`); colour jitter (brightness/contrast/saturation 0.2, hue 0.02).
        - ``"aerial"``: top-down imagery: all 8 flips/90-degree rotations; crops at native resolution (probability
          0.7, sides 0.4-1) so the following resize zooms in; the resize never shrinks the image by the scale choice
          (only ``max_size`` can). Pick ``scales`` at or above the native image size.
        - ``"medical"``: grayscale-safe (1- or 3-channel, no hue or saturation changes): CLAHE, brightness/contrast,
          gamma, a mild affine (scale 0.9-1.1, shift 5 %, rotation 5 degrees), a mild crop (sides 0.8-1,
          probability 0.3), multi-scale resize; no flip unless ``horizontal_flip=True`` (laterality matters).
        - ``"eval"``: deterministic resize of the shortest side to ``max(scales)``, capped by ``max_size``.

    Args:
        scales: shortest-side sizes to draw from; defaults to DETR's 480-800 (use :func:`detr_scales` for others).
        max_size: cap on the longest side; defaults to 1333 when ``scales`` is defaulted, else none.
        min_visibility: boxes keeping less than this share of their area after a crop or shift are dropped
            (ignored by "eval", which never drops boxes).
        crop_scale: range of crop side fractions, overriding the preset's.
        horizontal_flip: force the preset's horizontal flip on or off.
        seed: seed of the pipeline's random generators (reproducible augmentation in one process).
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown transforms preset {preset!r}; choose one of {list(PRESETS)}")
    if scales is None:
        scales, max_size = list(DETR_SCALES), DETR_MAX_SIZE if max_size is None else max_size
    scales = [int(scales)] if isinstance(scales, int) else [int(s) for s in scales]
    if not scales:
        raise ValueError("scales must name at least one size")

    if preset == "eval":
        steps: list[A.BasicTransform] = [ResizeShortestEdge(max(scales), max_size)]
        return A.Compose(steps, bbox_params=bbox_params(0.0), seed=seed)

    if preset == "train":
        steps = [
            A.HorizontalFlip(p=0.5 if horizontal_flip in (None, True) else 0.0),
            ObjectAwareRandomCrop(crop_scale or (0.5, 1.0), min_visibility=min_visibility, p=0.5),
            ResizeShortestEdge(scales, max_size),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
        ]
    elif preset == "aerial":
        steps = [
            A.HorizontalFlip(p=0.5 if horizontal_flip in (None, True) else 0.0),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=1.0),
            ObjectAwareRandomCrop(crop_scale or (0.4, 1.0), min_visibility=min_visibility, p=0.7),
            ResizeShortestEdge(scales, max_size, upscale_only=True),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.15, hue=0.0, p=0.5),
        ]
    else:  # medical
        steps = [
            A.HorizontalFlip(p=0.5 if horizontal_flip else 0.0),
            A.CLAHE(clip_limit=(1.0, 3.0), tile_grid_size=(8, 8), p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.RandomGamma(gamma_limit=(85, 115), p=0.3),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-5, 5),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.5,
            ),
            ObjectAwareRandomCrop(crop_scale or (0.8, 1.0), min_visibility=min_visibility, p=0.3),
            ResizeShortestEdge(scales, max_size),
        ]
    return A.Compose(steps, bbox_params=bbox_params(min_visibility), seed=seed)


# ------------------------------------------------------------------------------------------------ dataset -> arrays
def _decode(image: Any, image_id: Any) -> np.ndarray:
    """A dataset image -> uint8 (H, W, 3) RGB or (H, W, 1) grayscale array, by :mod:`detr_hf.imaging`'s policy
    (EXIF orientation applied, 16-bit and float images to 8 bits)."""
    if isinstance(image, (Mapping, str, os.PathLike)):  # a path, or the Image feature with decode=False
        try:
            image = open_image(image)
        except ValueError as error:
            raise ValueError(f"image_id {image_id}: {error}") from None
    if isinstance(image, Image.Image):
        image = to_8bit(upright(image))
        image = image.convert("L" if image.mode in GRAY_MODES else "RGB")
        array = np.asarray(image)
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(f"image_id {image_id}: expected uint8 pixels, got an array of dtype {array.dtype}")
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
            raise ValueError(f"image_id {image_id}: expected an HWC image with 1 or 3 channels, got {array.shape}")
    return np.ascontiguousarray(array[..., None] if array.ndim == 2 else array)


def _checked_boxes(boxes: np.ndarray, height: int, width: int, image_id: Any) -> np.ndarray:
    """Validate COCO boxes against the image and clip those that stick out; raise on any that cannot be kept."""
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    x, y, w, h = boxes.T
    bad = ~np.isfinite(boxes).all(axis=1) | (w <= 0) | (h <= 0)
    outside = (x >= width) | (y >= height) | (x + w <= 0) | (y + h <= 0)
    if np.any(bad | outside):
        index = int(np.flatnonzero(bad | outside)[0])
        problem = "is empty or not finite" if bad[index] else f"lies entirely outside the {width}x{height} image"
        raise ValueError(
            f"image_id {image_id}: object {index} has bbox {boxes[index].tolist()} (COCO x, y, w, h) which {problem}; "
            "fix or drop it when building the dataset (the dataset validator reports these)"
        )
    x0, y0 = np.clip(x, 0, width), np.clip(y, 0, height)
    x1, y1 = np.clip(x + w, 0, width), np.clip(y + h, 0, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def _optional_column(objects: Mapping, key: str, num: int, default: Any, dtype: Any, where: Any) -> np.ndarray:
    values = objects.get(key)
    if values is None:
        return np.full(num, default, dtype=dtype)
    values = np.asarray(values, dtype=dtype).reshape(-1)
    if len(values) != num:
        raise ValueError(f"image_id {where}: {len(values)} values of objects.{key} for {num} boxes")
    return values


class DetectionTransform:
    """Decode + augment batches of dataset rows; see :func:`make_transform_fn`. A class so that it pickles
    (DataLoader workers started with "spawn", the default on macOS and Windows, receive the dataset pickled)."""

    def __init__(self, transforms: A.Compose | None, image_column: str = "image", objects_column: str = "objects"):
        if transforms is not None:
            processor = transforms.processors.get("bboxes")
            params = getattr(processor, "params", None)
            if params is None or params.format != "coco" or tuple(params.label_fields) != BBOX_LABEL_FIELDS:
                raise ValueError(
                    "make_transform_fn needs an A.Compose with bbox_params=detr_hf.data.transforms.bbox_params(...) "
                    f"(COCO boxes, label_fields={list(BBOX_LABEL_FIELDS)})"
                )
        self.transforms = transforms
        self.image_column = image_column
        self.objects_column = objects_column
        self._pid = os.getpid()

    def _reseed_in_new_process(self) -> None:
        # A forked or spawned DataLoader worker starts with a copy of the pipeline's random state: without a reseed
        # every worker would draw the same augmentations. torch gives each worker its own (reproducible) seed.
        if self.transforms is None or os.getpid() == self._pid:
            return
        self._pid = os.getpid()
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        seed = info.seed if info is not None else random.SystemRandom().getrandbits(63)
        self.transforms.set_random_seed(seed % 2**32)

    def set_random_seed(self, seed: int) -> None:
        """Seeds the augmentation pipeline. In a DataLoader worker an explicit seed wins over the worker's own
        reseed, which would otherwise replace it at the worker's first call."""
        if self.transforms is not None:
            self.transforms.set_random_seed(seed)
        self._pid = os.getpid()

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        self._reseed_in_new_process()
        out: dict[str, list] = {"image": [], "image_id": [], "annotations": [], "orig_size": []}
        count = len(batch[self.image_column])
        image_ids = batch.get("image_id") or list(range(count))
        file_names = batch.get("file_name") or [None] * count
        for row in range(count):
            image_id = image_ids[row]
            where = f"{image_id} ({file_names[row]})" if file_names[row] else image_id
            image = _decode(batch[self.image_column][row], where)
            height, width = image.shape[:2]
            for key, actual in (("width", width), ("height", height)):
                expected = batch.get(key, [None] * count)[row]
                if expected and expected != actual:
                    raise ValueError(
                        f"image_id {where}: the row says {key}={expected} but the decoded image (EXIF "
                        f"orientation applied) has {key}={actual}"
                    )
            image, annotations = self._transform_one(image, batch[self.objects_column][row], image_id, where)
            out["image"].append(image)
            out["image_id"].append(image_id)
            out["annotations"].append({"image_id": image_id, "annotations": annotations})
            out["orig_size"].append((height, width))
        return out

    def _transform_one(self, image: np.ndarray, objects: Mapping, image_id: Any, where: Any) -> tuple[np.ndarray, list]:
        height, width = image.shape[:2]
        num = len(objects["bbox"])
        boxes = _checked_boxes(np.asarray(objects["bbox"], dtype=np.float64).reshape(-1, 4), height, width, where)
        categories = np.asarray(objects["category"], dtype=np.int64).reshape(-1)
        if len(categories) != num or (num and categories.min() < 0):
            raise ValueError(f"image_id {where}: categories {categories.tolist()} do not label the {num} boxes")
        areas = _optional_column(objects, "area", num, 0.0, np.float64, where)
        iscrowd = _optional_column(objects, "iscrowd", num, 0, np.int64, where)
        ids = objects["id"] if objects.get("id") is not None else [None] * num

        if self.transforms is not None:
            result = self.transforms(
                image=image, bboxes=boxes, category_ids=categories, box_indices=np.arange(num, dtype=np.int64)
            )
            image = result["image"]
            if image.ndim == 2:
                image = image[..., None]
            new_boxes = np.asarray(result["bboxes"], dtype=np.float64).reshape(-1, 4)
            kept = np.asarray(result["box_indices"], dtype=np.int64).reshape(-1)
        else:
            new_boxes, kept = boxes, np.arange(num)
        # Scale each area by its box's change of area; boxes without a usable area fall back to w * h.
        old_box_area = np.prod(boxes[kept, 2:], axis=1)
        new_box_area = np.prod(new_boxes[:, 2:], axis=1)
        new_areas = np.where(
            areas[kept] > 0, areas[kept] * new_box_area / np.maximum(old_box_area, 1e-12), new_box_area
        )
        annotations = [
            {"bbox": box, "category_id": int(categories[k]), "area": area, "iscrowd": int(iscrowd[k]), "id": ids[k]}
            for box, k, area in zip(new_boxes.tolist(), kept.tolist(), new_areas.tolist())
        ]
        return image, annotations


def make_transform_fn(
    transforms: A.Compose | None,
    *,
    image_column: str = "image",
    objects_column: str = "objects",
) -> DetectionTransform:
    """A callable for ``dataset.with_transform`` that augments a batch of rows of the package schema.

    It returns, per row: ``image`` (uint8 (H, W, 3) RGB, or (H, W, 1) for grayscale sources), ``image_id``,
    ``annotations`` (``{"image_id", "annotations": [{"bbox": [x, y, w, h], "category_id", "area", "iscrowd",
    "id"}]}`` in the augmented image's pixels) and ``orig_size`` (``(height, width)`` before augmentation).
    ``area`` is the dataset's area scaled by how much the box's area changed, so mask areas stay mask areas.
    ``transforms=None`` only decodes. Each DataLoader worker reseeds the pipeline from torch's per-worker seed, so
    workers do not repeat each other's augmentations (pass ``seed`` to :func:`build_transforms` for reproducible
    augmentation in the main process).
    """
    return DetectionTransform(transforms, image_column=image_column, objects_column=objects_column)


# ---------------------------------------------------------------------------------------------- arrays -> batches
class DetectionCollator:
    """Batch :class:`DetectionTransform` outputs through an image processor; see :func:`make_collate_fn`."""

    def __init__(self, image_processor: Any, return_tensors: str = "pt"):
        self.image_processor = image_processor
        self.return_tensors = return_tensors
        mean = getattr(image_processor, "image_mean", None)
        self.channels = len(np.atleast_1d(mean)) if mean is not None else 3

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        images = []
        for example in examples:
            image = example["image"]
            if image.ndim == 3 and image.shape[2] == 1 and self.channels == 3:
                image = np.repeat(image, 3, axis=2)
            images.append(image)
        encoded = self.image_processor(
            images=images,
            annotations=[example["annotations"] for example in examples],
            do_resize=False,
            return_tensors=self.return_tensors,
            input_data_format="channels_last",
        )
        labels = list(encoded["labels"])
        for label, example in zip(labels, examples):
            if "orig_size" in example:
                orig_size = np.asarray(example["orig_size"], dtype=np.int64)
                if self.return_tensors == "pt":
                    import torch

                    orig_size = torch.from_numpy(orig_size)
                label["orig_size"] = orig_size
        batch = {"pixel_values": encoded["pixel_values"], "labels": labels}
        if "pixel_mask" in encoded:  # processors that resize to one fixed size (RT-DETR's) return none
            batch["pixel_mask"] = encoded["pixel_mask"]
        return batch


def make_collate_fn(image_processor: Any, *, return_tensors: str = "pt") -> DetectionCollator:
    """A DataLoader ``collate_fn`` turning :func:`make_transform_fn` rows into ``pixel_values``/``pixel_mask``/``labels``.

    ``image_processor`` follows the DETR processor call convention (``detr_hf.DetrImageProcessor`` or transformers'
    ``DetrImageProcessor``); it is called with ``do_resize=False`` since the augmentation already resized. Grayscale
    images are repeated to 3 channels when the processor normalizes 3. Each label's ``orig_size`` is set to the image's
    size before augmentation (as in DETR), so predictions can be mapped back to the original image for evaluation.
    """
    return DetectionCollator(image_processor, return_tensors=return_tensors)
