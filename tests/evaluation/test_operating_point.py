"""Per-class thresholds: the F1 the curve promises is the F1 they give; threshold="auto" uses the saved ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_DETR, TINY_RESNET
from report_fixtures import CLASSES, OverconfidentStub, detection_split, iou_xyxy, random_objects
from transformers import ResNetConfig

from detr_hf import DetrConfig, DetrForObjectDetection
from detr_hf.evaluation import evaluate_images
from detr_hf.evaluation.matching import match_images
from detr_hf.evaluation.operating_point import operating_points, save_operating_point
from detr_hf.image_processing_detr import DetrImageProcessor


def _independent_f1(detector, dataset, truth_labels, label: int, threshold: float) -> float:
    """Keep detections of `label` scoring above `threshold`, match them greedily by score at IoU 0.5, count."""
    tp = fp = num_gt = 0
    for row in dataset:
        (result,) = detector([row["image"]], threshold=0.0)
        gt = [
            [x, y, x + w, y + h]
            for (x, y, w, h), c in zip(row["objects"]["bbox"], row["objects"]["category"])
            if c == label
        ]
        num_gt += len(gt)
        taken = set()
        for score, lab, box in sorted(zip(result["scores"].tolist(), result["labels"].tolist(),
                                          result["boxes"].tolist()), key=lambda d: -d[0]):  # fmt: skip
            if lab != label or score <= threshold:
                continue
            ious = [(iou_xyxy(box, g), j) for j, g in enumerate(gt) if j not in taken]
            best = max(ious, default=(0.0, -1))
            if best[0] >= 0.5:
                taken.add(best[1])
                tp += 1
            else:
                fp += 1
    precision, recall = tp / max(tp + fp, 1), tp / max(num_gt, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def test_max_f1_thresholds_give_the_promised_f1():
    truth = random_objects(80, seed=5)
    dataset = detection_split(truth)
    detector = OverconfidentStub(truth)
    _, evaluator = evaluate_images(detector, dataset, show_progress=False)
    points, curves = operating_points(match_images(evaluator), detector.id2label)
    for label, name in detector.id2label.items():
        point = points[name]
        assert point.rule == "max_f1"
        assert point.f1 == pytest.approx(float(curves[label].f1.max()))
        assert _independent_f1(detector, dataset, None, label, point.threshold) == pytest.approx(point.f1, abs=1e-9)


def test_target_precision_is_reached_with_the_most_recall():
    truth = random_objects(80, seed=6)
    _, evaluator = evaluate_images(OverconfidentStub(truth), detection_split(truth), show_progress=False)
    images = match_images(evaluator)
    points, curves = operating_points(images, dict(enumerate(CLASSES)), target_precision=0.8)
    for label, name in enumerate(CLASSES):
        curve, point = curves[label], points[name]
        assert point.rule == "target_precision" and point.precision >= 0.8
        reaching = curve.recall[curve.precision >= 0.8]
        assert point.recall == pytest.approx(reaching.max())


def _outputs(probabilities: list[list[float]]) -> dict[str, torch.Tensor]:
    """Softmax-head outputs for one image whose queries have these class probabilities (last = no object)."""
    probs = torch.tensor(probabilities)
    return {"logits": probs.log().unsqueeze(0), "pred_boxes": torch.full((1, len(probabilities), 4), 0.25)}


def test_threshold_auto_uses_the_saved_per_class_thresholds():
    outputs = _outputs([[0.6, 0.1, 0.1, 0.2], [0.1, 0.6, 0.1, 0.2], [0.05, 0.05, 0.85, 0.05], [0.4, 0.1, 0.1, 0.4]])
    plain = DetrImageProcessor()
    assert plain.post_process_object_detection(outputs, threshold=0.5)[0]["scores"].tolist() == pytest.approx(
        [0.85, 0.6, 0.6]
    )  # a float threshold works as before
    with pytest.raises(ValueError, match="per-class thresholds"):
        plain.post_process_object_detection(outputs, threshold="auto")
    tuned = DetrImageProcessor(detection_thresholds={"0": 0.3, "1": 0.7, "2": 0.9})
    (result,) = tuned.post_process_object_detection(outputs, threshold="auto")
    assert result["labels"].tolist() == [0, 0]  # 0.6 and 0.4 pass 0.3; b's 0.6 fails 0.7, c's 0.85 fails 0.9
    assert result["scores"].tolist() == pytest.approx([0.6, 0.4])
    restored = DetrImageProcessor.from_dict(tuned.to_dict())
    assert restored.detection_thresholds == {"0": 0.3, "1": 0.7, "2": 0.9}
    assert "detection_thresholds" not in plain.to_dict()


def test_temperature_divides_the_logits_of_a_sigmoid_head():
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    outputs = {"logits": logits, "pred_boxes": torch.full((1, 2, 4), 0.25)}
    processor = DetrImageProcessor(use_focal_loss=True, score_temperature=2.0)
    (result,) = processor.post_process_object_detection(outputs, threshold=0.0)
    expected = sorted((logits.flatten() / 2.0).sigmoid().tolist(), reverse=True)
    assert result["scores"].tolist() == pytest.approx(expected, abs=1e-6)


def test_saved_operating_point_reaches_load_detector_predict_and_the_pipeline(tmp_path):
    from PIL import Image
    from transformers import pipeline

    from detr_hf.inference import load_inference_detector
    from detr_hf.pretrained import load_detector

    torch.manual_seed(0)
    model = DetrForObjectDetection(
        DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **{**TINY_DETR, "num_labels": 3})
    )
    model.save_pretrained(tmp_path)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(tmp_path)
    save_operating_point(tmp_path, {"0": 0.0, "1": 0.0, "2": 0.0}, 1.5)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (everything,) = load_inference_detector(str(tmp_path))([image], threshold=0.0)
    scores, labels = everything["scores"], everything["labels"]
    # per class, the median score: about half of each class's detections pass
    thresholds = {str(c): float(scores[labels == c].median()) if (labels == c).any() else 0.99 for c in range(3)}
    save_operating_point(tmp_path, thresholds, None)  # None keeps the temperature
    assert json.loads((tmp_path / "config.json").read_text())["detection_thresholds"] == thresholds
    _, processor = load_detector(str(tmp_path))
    assert processor.detection_thresholds == thresholds and processor.score_temperature == 1.5

    expected = scores[scores > torch.tensor([thresholds[str(int(c))] for c in labels])]
    (auto,) = load_inference_detector(str(tmp_path))([image], threshold="auto")
    assert auto["scores"].tolist() == pytest.approx(expected.tolist())
    assert 0 < len(expected) < len(scores)  # the thresholds do select

    found = pipeline("object-detection", model=str(tmp_path), threshold="auto")(image)
    assert sorted(d["score"] for d in found) == pytest.approx(sorted(expected.tolist()), abs=1e-5)
    save_operating_point(tmp_path, thresholds, 2.0)  # a second report measured scores already at T=1.5
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["score_temperature"] == pytest.approx(3.0)
