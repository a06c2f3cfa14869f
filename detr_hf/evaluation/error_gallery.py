"""The error gallery: the highest-scoring false positives and the largest missed objects, as ranked crops.

A confident detection that matches no ground-truth box of its class is either a model error or a label error: when
it covers a box of another class (IoU >= 0.5) it is a candidate mislabel, and when it covers nothing, a candidate
missing label. The largest objects the model misses at its operating point are the hard (or wrongly drawn) cases.
Each crop shows the ground truth (``gt <class>``) and the detection (``<class> <score>``); the JSON list points back to
the images by ``file_name`` and ``image_id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .matching import ImageMatches, overlaps


def false_positives(images: Sequence[ImageMatches], id2label: Mapping[int, str], limit: int = 20) -> list[dict]:
    """The ``limit`` highest-scoring detections that matched nothing of their class (crowd-only ones excluded),
    best first, each with the ground-truth box it overlaps most (any class), if any."""
    candidates = []
    for index, image in enumerate(images):
        for d in np.flatnonzero(~image.det_correct & ~image.det_ignored):
            candidates.append((float(image.det_scores[d]), index, int(d)))
    candidates.sort(key=lambda c: -c[0])
    entries = []
    for score, index, d in candidates[:limit]:
        image = images[index]
        box = image.det_boxes[d]
        iou = overlaps(box[None], image.gt_boxes, np.zeros(len(image.gt_boxes), dtype=bool))[0]
        nearest = None
        if iou.size and iou.max() > 0:
            g = int(np.argmax(iou))
            nearest = {"label": id2label[int(image.gt_labels[g])], "iou": round(float(iou[g]), 3),
                       "box_xyxy": [round(float(v), 2) for v in image.gt_boxes[g]]}  # fmt: skip
        entries.append(
            {
                "kind": "false_positive",
                "image_id": image.image_id,
                "file_name": image.file_name,
                "label": id2label[int(image.det_labels[d])],
                "score": round(score, 4),
                "box_xyxy": [round(float(v), 2) for v in box],
                "overlapping_ground_truth": nearest,
                "_image": index,
            }
        )
    return entries


def missed_objects(
    images: Sequence[ImageMatches],
    id2label: Mapping[int, str],
    thresholds: Mapping[int, float] | float = 0.5,
    limit: int = 20,
) -> list[dict]:
    """The ``limit`` largest non-crowd ground-truth boxes that no detection above its class threshold matched, each
    with the best-scoring detection of any class overlapping it, if any."""
    candidates = []
    for index, image in enumerate(images):
        limits = np.array([_limit(thresholds, int(label)) for label in image.det_labels], dtype=np.float64)
        kept = image.det_scores > limits
        found = np.zeros(len(image.gt_boxes), dtype=bool)
        found[image.det_gt[kept & image.det_correct]] = True
        for g in np.flatnonzero(~found & ~image.gt_crowd):
            x0, y0, x1, y1 = image.gt_boxes[g]
            candidates.append((float((x1 - x0) * (y1 - y0)), index, int(g)))
    candidates.sort(key=lambda c: -c[0])
    entries = []
    for area, index, g in candidates[:limit]:
        image = images[index]
        iou = overlaps(image.det_boxes, image.gt_boxes[g][None], np.zeros(1, dtype=bool))[:, 0]
        near = np.flatnonzero(iou >= 0.3)
        best = None
        if near.size:
            d = int(near[np.argmax(image.det_scores[near])])
            best = {"label": id2label[int(image.det_labels[d])], "score": round(float(image.det_scores[d]), 4),
                    "iou": round(float(iou[d]), 3), "box_xyxy": [round(float(v), 2) for v in image.det_boxes[d]]}  # fmt: skip
        entries.append(
            {
                "kind": "missed",
                "image_id": image.image_id,
                "file_name": image.file_name,
                "label": id2label[int(image.gt_labels[g])],
                "area": round(area, 1),
                "box_xyxy": [round(float(v), 2) for v in image.gt_boxes[g]],
                "best_detection": best,
                "_image": index,
            }
        )
    return entries


def _limit(thresholds: Mapping[int, float] | float, label: int) -> float:
    return float(thresholds.get(label, 0.5)) if isinstance(thresholds, Mapping) else float(thresholds)


def _crop(image: Any, focus: Sequence[float], margin: float = 0.5, minimum: int = 48) -> tuple[Any, np.ndarray]:
    """The region around ``focus`` (xyxy) grown by ``margin`` of its size (at least ``minimum`` px a side), and its
    top-left corner."""
    x0, y0, x1, y1 = focus
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    grow_x, grow_y = max(w * margin, (minimum - w) / 2, 0), max(h * margin, (minimum - h) / 2, 0)
    left, top = int(max(0, np.floor(x0 - grow_x))), int(max(0, np.floor(y0 - grow_y)))
    right, bottom = int(min(image.width, np.ceil(x1 + grow_x))), int(min(image.height, np.ceil(y1 + grow_y)))
    return image.crop((left, top, max(right, left + 1), max(bottom, top + 1))), np.array([left, top, left, top])


def render_tile(image: Any, entry: Mapping[str, Any], matches: ImageMatches, id2label: Mapping[int, str], size: int):
    """One crop: every ground-truth box in it (``gt <class>``), then the entry's detection (``<class> <score>``)."""
    from PIL import Image

    from ..imaging import to_rgb8
    from ..visualization import draw_detections

    crop, offset = _crop(to_rgb8(image), entry["box_xyxy"])
    scale = size / max(crop.width, crop.height)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BILINEAR)
    gt_names = {label: f"gt {name}" for label, name in id2label.items()}
    crop = draw_detections(crop, (matches.gt_boxes - offset) * scale, matches.gt_labels, None, gt_names)
    label_of = {name: label for label, name in id2label.items()}
    detection = entry if entry["kind"] == "false_positive" else entry.get("best_detection")
    if detection is not None:
        box = (np.asarray(detection["box_xyxy"])[None] - offset) * scale
        crop = draw_detections(crop, box, [label_of[detection["label"]]], [detection["score"]], id2label)
    return crop


def write_gallery(
    entries: list[dict],
    images: Sequence[ImageMatches],
    dataset: Any,
    id2label: Mapping[int, str],
    path: Path,
    columns: int = 5,
    tile: int = 160,
) -> list[dict]:
    """Save the entries' crops as one PNG grid at ``path`` (row by row, in rank order); returns the entries, JSON-ready,
    with their ``rank`` and ``grid``."""
    from ..visualization import image_grid

    rows = {int(image_id): row for row, image_id in enumerate(dataset.select_columns(["image_id"])["image_id"])}
    tiles = []
    for entry in entries:
        matches = images[entry["_image"]]
        tiles.append(render_tile(dataset[rows[matches.image_id]]["image"], entry, matches, id2label, tile))
    if tiles:
        image_grid(tiles, columns=columns).save(path)
    return [
        {"rank": rank, "grid": path.name, **{k: v for k, v in entry.items() if k != "_image"}}
        for rank, entry in enumerate(entries, start=1)
    ]
