"""How long the operating-point report's numbers take: matching, COCOeval's per-image verdicts, bootstrap resamples.

Generated ground truth (a COCO dict, no pixels) and detections of a noisy detector (100 a image, as DETR gives), so
only the report's own work is timed. Run:

    OMP_NUM_THREADS=1 python benchmarks/bench_report.py --images 300 1000 --resamples 200 1000 --classes 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from detr_hf.evaluation import CocoEvaluator
from detr_hf.evaluation.bootstrap import bootstrap_ap, per_image_verdicts
from detr_hf.evaluation.report import build_report

try:
    from machine import machine_line
except ImportError:  # run from the repository root
    from benchmarks.machine import machine_line


def generated(num_images: int, num_classes: int, detections: int = 100, seed: int = 0) -> CocoEvaluator:
    """An evaluator filled with a noisy detector's output on generated boxes (640x480 images, 1-10 objects each)."""
    rng = np.random.default_rng(seed)
    images, annotations, n = [], [], 0
    predictions = []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480})
        count = int(rng.integers(1, 11))
        xy = rng.uniform(0, 400, size=(count, 2))
        wh = rng.uniform(16, 200, size=(count, 2))
        labels = rng.integers(0, num_classes, size=count)
        for box, label in zip(np.hstack([xy, wh]), labels):
            n += 1
            annotations.append({"id": n, "image_id": image_id, "category_id": int(label), "bbox": box.tolist(),
                                "area": float(box[2] * box[3]), "iscrowd": 0})  # fmt: skip
        found = rng.random(count) < 0.7
        jitter = rng.normal(0, 4, size=(count, 4))
        boxes = np.hstack([xy, xy + wh]) + jitter
        noise_xy = rng.uniform(0, 500, size=(detections - count, 2))
        noise = np.hstack([noise_xy, noise_xy + rng.uniform(10, 120, size=(detections - count, 2))])
        all_boxes = np.vstack([boxes[found], noise, boxes[~found] + 300])[:detections]
        scores = np.concatenate([rng.uniform(0.4, 1.0, found.sum()), rng.uniform(0, 0.6, len(all_boxes) - found.sum())])
        all_labels = np.concatenate([labels[found], rng.integers(0, num_classes, len(all_boxes) - found.sum())])
        predictions.append({"image_id": image_id, "scores": scores[: len(all_boxes)], "labels": all_labels,
                            "boxes": all_boxes})  # fmt: skip
    names = [{"id": c, "name": f"class_{c}"} for c in range(num_classes)]
    evaluator = CocoEvaluator({"images": images, "annotations": annotations, "categories": names})
    evaluator.update(predictions)
    return evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--resamples", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--classes", type=int, default=5)
    args = parser.parse_args()
    print(machine_line())
    print(f"{'images':>7} {'step':<34} {'seconds':>8}")
    for num_images in args.images:
        evaluator = generated(num_images, args.classes)
        start = time.perf_counter()
        verdicts = per_image_verdicts(evaluator)
        print(f"{num_images:>7} {'per-image verdicts (COCOeval once)':<34} {time.perf_counter() - start:>8.2f}")
        for resamples in args.resamples:
            start = time.perf_counter()
            bootstrap_ap(verdicts, num_resamples=resamples)
            print(f"{num_images:>7} {f'bootstrap, {resamples} resamples':<34} {time.perf_counter() - start:>8.2f}")
        start = time.perf_counter()
        build_report(evaluator, num_resamples=500)
        print(f"{num_images:>7} {'whole report, 500 resamples, no plots':<34} {time.perf_counter() - start:>8.2f}")


if __name__ == "__main__":
    main()
