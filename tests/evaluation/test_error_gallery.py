"""The error gallery finds swapped labels: a detector that knows the true class flags them as confident errors."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from report_fixtures import TrueClassStub, detection_split, iou_xyxy, random_objects

from detr_hf.evaluation import evaluate_images
from detr_hf.evaluation.error_gallery import false_positives, missed_objects, write_gallery
from detr_hf.evaluation.matching import match_images


def _swap(truth: dict, source: int, target: int, fraction: float, seed: int = 0):
    """Annotated labels with `fraction` of the `source` objects labelled `target`; the swapped (image_id, box)."""
    rng = np.random.default_rng(seed)
    labels, swapped = {}, []
    for image_id, objects in truth.items():
        labels[image_id] = []
        for (x, y, w, h), label in objects:
            if label == source and rng.random() < fraction:
                labels[image_id].append(target)
                swapped.append((image_id, [x, y, x + w, y + h]))
            else:
                labels[image_id].append(label)
    return labels, swapped


def test_top_false_positives_hold_most_swapped_labels(tmp_path):
    truth = random_objects(70, seed=11)
    labels, swapped = _swap(truth, source=0, target=1, fraction=0.25)
    assert 5 <= len(swapped) <= 20
    dataset = detection_split(truth, labels)
    detector = TrueClassStub(truth, background=1)
    _, evaluator = evaluate_images(detector, dataset, show_progress=False)
    images = match_images(evaluator)
    top = false_positives(images, detector.id2label, limit=20)
    assert [e["score"] for e in top] == sorted((e["score"] for e in top), reverse=True)

    def flagged(image_id, box):
        return any(e["image_id"] == image_id and iou_xyxy(e["box_xyxy"], box) >= 0.5 for e in top)

    hits = [s for s in swapped if flagged(*s)]
    assert len(hits) >= len(swapped) / 2
    # a flagged swap is a candidate mislabel: it covers the object, annotated with another class
    entry = next(e for e in top if any(e["image_id"] == i and iou_xyxy(e["box_xyxy"], b) >= 0.5 for i, b in hits))
    assert entry["label"] == "a" and entry["overlapping_ground_truth"]["label"] == "b"
    assert entry["overlapping_ground_truth"]["iou"] >= 0.5

    written = write_gallery(top, images, dataset, detector.id2label, tmp_path / "fp.png")
    assert [e["rank"] for e in written] == list(range(1, len(top) + 1))
    assert all(e["file_name"] == f"img_{e['image_id']:04d}.png" for e in written)
    json.dumps(written)
    grid = Image.open(tmp_path / "fp.png")
    assert grid.width > 160 * 4 and grid.height >= 160 * (len(top) // 5)


def test_largest_missed_objects_come_first():
    truth = random_objects(30, seed=12)
    labels, swapped = _swap(truth, source=0, target=1, fraction=1.0)
    detector = TrueClassStub(truth, background=0)
    _, evaluator = evaluate_images(detector, detection_split(truth, labels), show_progress=False)
    missed = missed_objects(match_images(evaluator), detector.id2label, thresholds=0.5, limit=1000)
    assert len(missed) == len(swapped)  # exactly the relabelled objects are missed (their class is never predicted)
    assert all(e["label"] == "b" and e["best_detection"]["label"] == "a" for e in missed)
    areas = [e["area"] for e in missed]
    assert areas == sorted(areas, reverse=True)
