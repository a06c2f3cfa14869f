"""Resizing for DETR-family image processors: the accepted ``size`` spellings, the output size (with transformers'
rounding, so pixel values match), the resampling filter, and the resize of an (H, W, C) array of any depth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image

__all__ = ["DEFAULT_SIZE", "as_resample", "get_resize_output_size", "resize_array", "standardize_size"]

DEFAULT_SIZE = {"shortest_edge": 800, "longest_edge": 1333}
_SIZE_LAYOUTS = (
    ("shortest_edge", "longest_edge"),
    ("max_height", "max_width"),
    ("height", "width"),
    ("shortest_edge",),
)
_RESAMPLE_NAMES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def standardize_size(size: int | Sequence[int] | Mapping[str, int] | None, max_size: int | None = None) -> dict:
    """Turn any accepted ``size`` spelling into one of the dicts `get_resize_output_size` understands.

    ``800`` (with ``max_size=1333``, the legacy DETR config) means ``{"shortest_edge": 800, "longest_edge": 1333}``;
    ``(h, w)`` means ``{"height": h, "width": w}``.
    """
    if size is None:
        return dict(DEFAULT_SIZE)
    if isinstance(size, int):
        return {"shortest_edge": size, "longest_edge": max_size} if max_size else {"shortest_edge": size}
    if isinstance(size, Mapping):
        given = {k: int(v) for k, v in size.items() if v is not None}
        for keys in _SIZE_LAYOUTS:
            if set(given) == set(keys):
                return given
        if max_size and set(given) == {"shortest_edge"}:
            return {**given, "longest_edge": int(max_size)}
        raise ValueError(
            f"size={dict(size)} is not understood; use one of {[dict.fromkeys(k, 0) for k in _SIZE_LAYOUTS]}"
        )
    if isinstance(size, Sequence) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    raise ValueError(f"size must be an int, a (height, width) pair or a dict, got {size!r}")


def get_resize_output_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """The ``(height, width)`` an image of ``height x width`` is resized to (same rounding as transformers' DETR).

    ``shortest_edge``/``longest_edge`` keeps the aspect ratio, scales the short side to ``shortest_edge`` unless the
    long side would then exceed ``longest_edge``; ``max_height``/``max_width`` fits the image inside that box (up or
    down); ``height``/``width`` is an exact size.
    """
    if "height" in size:
        return int(size["height"]), int(size["width"])
    if "max_height" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    short_target, long_limit = size["shortest_edge"], size.get("longest_edge")
    short_side, long_side = float(min(height, width)), float(max(height, width))
    exact_short = None
    if long_limit is not None and long_side / short_side * short_target > long_limit:
        exact_short = long_limit * short_side / long_side
        short_target = round(exact_short)
    if short_side == short_target:
        return height, width
    base = exact_short if exact_short is not None else short_target
    if width < height:
        return int(base * height / width), short_target
    return short_target, int(base * width / height)


def as_resample(resample: Any) -> int:
    if isinstance(resample, str):
        if resample.lower() not in _RESAMPLE_NAMES:
            raise ValueError(f"resample={resample!r} is not one of {sorted(_RESAMPLE_NAMES)}")
        return _RESAMPLE_NAMES[resample.lower()]
    return int(resample)


def resize_array(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize an (H, W, C) array with PIL (8-bit stays 8-bit, like transformers; anything else in float32)."""
    height, width = size
    if array.shape[:2] == (height, width):
        return array
    if array.dtype == np.uint8 and array.shape[2] == 3:
        return np.asarray(PIL.Image.fromarray(np.ascontiguousarray(array)).resize((width, height), resample))
    if array.dtype != np.uint8:
        array = array.astype(np.float32, copy=False)
    planes = [
        np.asarray(PIL.Image.fromarray(np.ascontiguousarray(array[:, :, c])).resize((width, height), resample))
        for c in range(array.shape[2])
    ]
    return np.stack(planes, axis=-1)
