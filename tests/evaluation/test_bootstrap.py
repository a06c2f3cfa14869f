"""Bootstrap intervals: the point is COCO's number, the interval holds it, and it shrinks as the split grows."""

from __future__ import annotations

import numpy as np
import pytest
from report_fixtures import OverconfidentStub, detection_split, random_objects

from detr_hf.evaluation import evaluate_images
from detr_hf.evaluation.bootstrap import bootstrap_ap, per_image_verdicts


def _bootstrap(num_images: int, seed: int, resamples: int = 200):
    truth = random_objects(num_images, seed=seed)
    metrics, evaluator = evaluate_images(OverconfidentStub(truth), detection_split(truth), show_progress=False)
    return metrics, bootstrap_ap(per_image_verdicts(evaluator), num_resamples=resamples, seed=0)


def test_point_estimate_is_coco_and_inside_the_interval():
    metrics, result = _bootstrap(60, seed=1)
    assert result.point["map"] == pytest.approx(metrics["map"], abs=1e-12)
    assert result.point["map_50"] == pytest.approx(metrics["map_50"], abs=1e-12)
    for name, value in metrics["map_per_class"].items():
        assert result.per_class_point["map"][name] == pytest.approx(value, abs=1e-12)
        low, high = result.per_class_interval["map"][name]
        assert low <= value <= high
    for key in ("map", "map_50"):
        low, high = result.interval[key]
        assert low < result.point[key] < high


def test_intervals_shrink_as_the_split_grows():
    _, small = _bootstrap(40, seed=2)
    _, large = _bootstrap(320, seed=2)
    width = {name: r.interval["map"][1] - r.interval["map"][0] for name, r in (("small", small), ("large", large))}
    assert width["large"] < 0.6 * width["small"]  # sqrt(8) narrower in expectation
    assert np.isfinite(list(width.values())).all()


def test_a_resample_without_some_images_is_coco_on_the_others():
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detr_hf.evaluation.bootstrap import _statistics

    truth = random_objects(50, seed=7)
    _, evaluator = evaluate_images(OverconfidentStub(truth), detection_split(truth), show_progress=False)
    verdicts = per_image_verdicts(evaluator)
    keep = np.random.default_rng(0).random(verdicts.num_images) < 0.6
    stats = _statistics(verdicts, keep[None].astype(np.float32))
    image_ids = sorted(image["id"] for image in evaluator.ground_truth["images"])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = evaluator.ground_truth
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(evaluator.coco_results()), iouType="bbox")
        coco_eval.params.imgIds = [i for i, k in zip(image_ids, keep) if k]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert stats["map"][0] == pytest.approx(coco_eval.stats[0], abs=1e-6)
    assert stats["map_50"][0] == pytest.approx(coco_eval.stats[1], abs=1e-6)
