"""Small generated splits and stub detectors for the operating-point report's tests.

Each image carries its id in its top-left pixel (red = id // 256, green = id % 256), so a stub detector called on the
decoded images (as ``evaluate_images`` calls any Detector) knows which image it sees and what is truly in it.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from detr_hf.data.schema import detection_features

CLASSES = ("a", "b", "c")
SIZE = 64


def random_objects(num_images: int, seed: int = 0, max_objects: int = 3) -> dict[int, list[tuple[list[float], int]]]:
    """``{image_id: [(xywh box, true label), ...]}``: 1..max_objects boxes per image, laid out in a 2x2 grid of cells
    so that they do not overlap."""
    rng = np.random.default_rng(seed)
    truth = {}
    for image_id in range(1, num_images + 1):
        cells = rng.permutation(4)[: rng.integers(1, max_objects + 1)]
        objects = []
        for cell in cells:
            row, column = divmod(int(cell), 2)
            w, h = rng.uniform(12, 28, size=2)
            x = column * 32 + rng.uniform(0, 32 - w)
            y = row * 32 + rng.uniform(0, 32 - h)
            objects.append(([float(x), float(y), float(w), float(h)], int(rng.integers(len(CLASSES)))))
        truth[image_id] = objects
    return truth


def detection_split(truth: dict, labels: dict[int, list[int]] | None = None, seed: int = 0) -> Dataset:
    """The split of ``truth`` in the package schema; ``labels`` overrides the annotated label of each object."""
    rng = np.random.default_rng(seed)
    rows = {key: [] for key in ("image_id", "image", "width", "height", "file_name", "objects")}
    for image_id, objects in truth.items():
        pixels = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        pixels[0, 0] = (image_id // 256, image_id % 256, 0)
        annotated = labels[image_id] if labels is not None else [label for _, label in objects]
        n = len(objects)
        rows["image_id"].append(image_id)
        rows["image"].append(Image.fromarray(pixels))
        rows["width"].append(SIZE)
        rows["height"].append(SIZE)
        rows["file_name"].append(f"img_{image_id:04d}.png")
        rows["objects"].append(
            {"id": list(range(n)), "area": [b[2] * b[3] for b, _ in objects], "bbox": [b for b, _ in objects],
             "category": list(annotated), "iscrowd": [0] * n, "difficult": [0] * n, "truncated": [0] * n}
        )  # fmt: skip
    return Dataset.from_dict(rows, features=detection_features(list(CLASSES)))


def image_id_of(image: Image.Image) -> int:
    red, green = np.asarray(image)[0, 0, :2]
    return int(red) * 256 + int(green)


def _logit(p: np.ndarray | float) -> np.ndarray:
    return np.log(np.asarray(p) / (1 - np.asarray(p)))


class OverconfidentStub:
    """Finds each true object with probability ``q`` (drawn per object in [0.2, 0.95]; otherwise its box lands beside
    the object) and scores it ``sigmoid(sharpness * logit(q))``: overconfident for ``sharpness > 1``, and calibrated
    by temperature ``sharpness``. Deterministic per image."""

    def __init__(self, truth: dict, sharpness: float = 3.0):
        self.truth, self.sharpness = truth, sharpness
        self.id2label = dict(enumerate(CLASSES))

    def __call__(self, images, threshold: float = 0.5):
        results = []
        for image in images:
            image_id = image_id_of(image)
            rng = np.random.default_rng(1000 + image_id)
            boxes, scores, labels = [], [], []
            for (x, y, w, h), label in self.truth[image_id]:
                q = rng.uniform(0.2, 0.95)
                shift = 0.05 * w if rng.random() < q else 0.8 * w
                boxes.append([x + shift, y, x + w + shift, y + h])
                scores.append(float(1 / (1 + np.exp(-self.sharpness * _logit(q)))))
                labels.append(label)
            results.append(_detections(boxes, scores, labels, threshold))
        return results


class TrueClassStub:
    """Predicts every object's true class (whatever the annotation says) with a confident score in [0.7, 0.99], and
    ``background`` false positives per image on empty corners with scores in [0.05, 0.9]."""

    def __init__(self, truth: dict, background: int = 1):
        self.truth, self.background = truth, background
        self.id2label = dict(enumerate(CLASSES))

    def __call__(self, images, threshold: float = 0.5):
        results = []
        for image in images:
            image_id = image_id_of(image)
            rng = np.random.default_rng(2000 + image_id)
            boxes, scores, labels = [], [], []
            for (x, y, w, h), label in self.truth[image_id]:
                boxes.append([x + 0.5, y + 0.5, x + w + 0.5, y + h])
                scores.append(float(rng.uniform(0.7, 0.99)))
                labels.append(label)
            for _ in range(self.background):
                x, y = rng.uniform(0, 50, size=2)
                boxes.append([x, y, x + 3, y + 3])  # too small to overlap any object at IoU 0.5
                scores.append(float(rng.uniform(0.05, 0.9)))
                labels.append(int(rng.integers(len(CLASSES))))
            results.append(_detections(boxes, scores, labels, threshold))
        return results


def _detections(boxes, scores, labels, threshold: float) -> dict[str, torch.Tensor]:
    scores_t = torch.tensor(scores, dtype=torch.float32)
    order = torch.argsort(scores_t, descending=True)
    keep = order[scores_t[order] > threshold]
    return {
        "scores": scores_t[keep],
        "labels": torch.tensor(labels, dtype=torch.int64)[keep],
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)[keep],
    }


def iou_xyxy(a, b) -> float:
    """IoU of two xyxy boxes, computed directly (independent of the package)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
