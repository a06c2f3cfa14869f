"""Box-aware albumentations transforms of DETR's recipe that albumentations lacks: the multi-scale shortest-edge
resize and the random crop that keeps at least one object. The presets that use them are in :mod:`.transforms`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop

__all__ = ["ObjectAwareRandomCrop", "ResizeShortestEdge"]


class ResizeShortestEdge(A.DualTransform):
    """Resize so the shortest side is a random choice of ``scales``, unless that makes the longest exceed ``max_size``.

    Like DETR's ``RandomResize``: the scale is ``min(s / shortest, max_size / longest)`` and the aspect ratio is kept.
    With ``upscale_only`` the image is never shrunk below its own size by the scale choice (only ``max_size`` can
    shrink it), which keeps tiny objects alive. Shrinking uses area interpolation (no aliasing), growing bilinear.
    """

    def __init__(
        self,
        scales: int | Sequence[int],
        max_size: int | None = None,
        upscale_only: bool = False,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.scales = [int(scales)] if isinstance(scales, int) else [int(s) for s in scales]
        if not self.scales or min(self.scales) < 1:
            raise ValueError(f"scales must be positive sizes, got {scales}")
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.max_size = max_size
        self.upscale_only = upscale_only

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        target = self.scales[0] if len(self.scales) == 1 else self.py_random.choice(self.scales)
        scale = target / min(height, width)
        if self.upscale_only:
            scale = max(scale, 1.0)
        if self.max_size is not None:
            scale = min(scale, self.max_size / max(height, width))
        return {"size": (max(1, round(height * scale)), max(1, round(width * scale)))}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        if img.shape[:2] == size:
            return img
        shrinking = size[0] * size[1] < img.shape[0] * img.shape[1]
        resized = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        return resized[..., None] if img.ndim == 3 and resized.ndim == 2 else resized

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        if mask.shape[:2] == size:
            return mask
        resized = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        return resized[..., None] if mask.ndim == 3 and resized.ndim == 2 else resized

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes  # albumentations keeps boxes normalized to the image, which resizing does not change

    def apply_to_keypoints(self, keypoints: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        # Keypoints sit on pixel centres (albumentations' flips map x to width - 1 - x), so scale about the corner.
        height, width = params["shape"][:2]
        keypoints = keypoints.copy()
        keypoints[:, 0] = (keypoints[:, 0] + 0.5) * (size[1] / width) - 0.5
        keypoints[:, 1] = (keypoints[:, 1] + 0.5) * (size[0] / height) - 0.5
        return keypoints

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scales", "max_size", "upscale_only")


class ObjectAwareRandomCrop(BaseCrop):
    """DETR's random-size crop that keeps at least one object.

    Each side of the crop is a random fraction in ``scale`` of the image side (drawn independently, as DETR does),
    at a random position. A crop is accepted if at least one box keeps ``min_visibility`` of its area in it (the
    same rule the pipeline's ``BboxParams`` then applies to every box), or if the image has no boxes; after
    ``max_tries`` rejected crops the image is left whole.
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.5, 1.0),
        min_visibility: float = 0.25,
        max_tries: int = 20,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.min_visibility = float(min_visibility)
        self.max_tries = int(max_tries)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        boxes = np.asarray(data.get("bboxes", np.zeros((0, 4))), dtype=np.float64)[:, :4]
        boxes = boxes * np.array([width, height, width, height])  # normalized xyxy -> pixels
        box_areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        for _ in range(self.max_tries):
            crop_w = max(1, round(width * self.py_random.uniform(*self.scale)))
            crop_h = max(1, round(height * self.py_random.uniform(*self.scale)))
            x0 = self.py_random.randint(0, width - crop_w)
            y0 = self.py_random.randint(0, height - crop_h)
            if len(boxes) == 0:
                return {"crop_coords": (x0, y0, x0 + crop_w, y0 + crop_h)}
            top_left = np.maximum(boxes[:, :2], (x0, y0))
            bottom_right = np.minimum(boxes[:, 2:], (x0 + crop_w, y0 + crop_h))
            kept = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
            if np.any(kept >= self.min_visibility * box_areas):
                return {"crop_coords": (x0, y0, x0 + crop_w, y0 + crop_h)}
        return {"crop_coords": (0, 0, width, height)}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "min_visibility", "max_tries")
