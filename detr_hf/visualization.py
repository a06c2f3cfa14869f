"""Drawing detections on images, for the CLI, notebooks and dataset previews."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .imaging import to_rgb8

__all__ = ["draw_detections", "image_grid", "label_color"]


def label_color(label: int) -> tuple[int, int, int]:
    """A saturated colour per class id; consecutive ids get well-separated hues (golden-ratio steps)."""
    hue = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def _to_pil(image: Any) -> Image.Image:
    """An 8-bit RGB picture of ``image``: a PIL image by :mod:`detr_hf.imaging`'s policy (16-bit keeps its top 8
    bits), an array or tensor in [0, 1] scaled by 255, other values clipped to 0..255."""
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        array = np.clip(array.astype(np.float32) * scale, 0, 255).round().astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def draw_detections(
    image: Any,
    boxes_xyxy: Any,
    labels: Sequence[int] | Any,
    scores: Sequence[float] | Any | None = None,
    id2label: Mapping[int, str] | None = None,
    *,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Return a copy of ``image`` (PIL, HWC/CHW array or tensor) with labelled boxes drawn on it.

    ``boxes_xyxy`` are absolute pixel corners ``(N, 4)``; ``labels`` class ids (coloured by :func:`label_color`);
    ``scores`` optional confidences shown after the name; ``id2label`` maps ids to names (ids are shown otherwise).
    Line width and font size follow the image size unless given.
    """
    canvas = _to_pil(image).copy()
    boxes = np.asarray(boxes_xyxy.detach().cpu() if hasattr(boxes_xyxy, "detach") else boxes_xyxy, dtype=np.float32)
    boxes = boxes.reshape(-1, 4)
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1)
    if scores is not None:
        scores = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float32)
        scores = scores.reshape(-1)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(
            f"draw_detections got {len(boxes)} boxes, {len(labels)} labels"
            + ("" if scores is None else f" and {len(scores)} scores")
        )
    side = min(canvas.size)
    line_width = line_width or max(1, round(side / 200))
    font = _font(font_size or max(8, round(side / 40)))
    draw = ImageDraw.Draw(canvas)
    for index, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        color = label_color(label)
        draw.rectangle(box, outline=color, width=line_width)
        text = str(label)
        if id2label:  # configs loaded from JSON may key by str
            text = str(id2label.get(int(label), id2label.get(str(label), label)))
        if scores is not None:
            text = f"{text} {scores[index]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        x = min(max(box[0], 0), max(canvas.width - text_w - 2, 0))
        y = box[1] - text_h - 2 if box[1] - text_h - 2 >= 0 else box[1]  # above the box, inside when at the top
        draw.rectangle((x, y, x + text_w + 2, y + text_h + 2), fill=color)
        draw.text((x + 1 - left, y + 1 - top), text, fill=(0, 0, 0), font=font)
    return canvas


def image_grid(images: Sequence[Any], columns: int = 4, padding: int = 2, background: int = 255) -> Image.Image:
    """Tile images (any of the types :func:`draw_detections` takes) row by row into one RGB image."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    tiles = [_to_pil(image) for image in images]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    cell_w = max(tile.width for tile in tiles)
    cell_h = max(tile.height for tile in tiles)
    grid = Image.new(
        "RGB",
        (columns * cell_w + (columns + 1) * padding, rows * cell_h + (rows + 1) * padding),
        (background,) * 3,
    )
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        grid.paste(tile, (padding + column * (cell_w + padding), padding + row * (cell_h + padding)))
    return grid


def __getattr__(name: str) -> Any:
    """``detr_hf.visualization.explain_detections`` (and its result types) from :mod:`detr_hf.explain`, imported on
    first use so that drawing boxes does not load the models."""
    if name in ("explain_detections", "Explanation", "QueryExplanation"):
        from . import explain

        return getattr(explain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
