"""The Detector interface: TorchDetector equals the model + processor it wraps; evaluate_images scores any detector."""

import numpy as np
import pytest
import torch
from conftest import TINY_DETR, TINY_RESNET
from PIL import Image
from transformers import ResNetConfig

from detr_hf import DetrConfig, DetrForObjectDetection, DetrImageProcessor
from detr_hf.data.synthetic import make_synthetic_dataset
from detr_hf.evaluation import evaluate_images
from detr_hf.inference import Detector, TorchDetector, image_size


def _tiny_detector() -> TorchDetector:
    torch.manual_seed(0)
    config = DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR)
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return TorchDetector(DetrForObjectDetection(config), processor)


def test_torch_detector_equals_model_and_processor():
    detector = _tiny_detector()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(50, 70), (90, 40)]]
    assert isinstance(detector, Detector)
    results = detector(images, threshold=0.0)
    batch = detector.processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = detector.model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    expected = detector.processor.post_process_object_detection(outputs, 0.0, target_sizes=[(50, 70), (90, 40)])
    for got, want in zip(results, expected):
        torch.testing.assert_close(got["boxes"], want["boxes"])
        torch.testing.assert_close(got["scores"], want["scores"])
    assert results[1]["boxes"][:, 2].max() <= 40 + 1e-4  # boxes in each image's own pixels
    assert detector([], threshold=0.5) == []


def test_image_size_reads_every_layout():
    assert image_size(Image.new("RGB", (7, 5))) == (5, 7)
    assert image_size(np.zeros((5, 7, 3))) == (5, 7)
    assert image_size(torch.zeros(3, 5, 7)) == (5, 7)


class _Oracle:
    """Returns each image's ground truth (found by its size) as detections, optionally dropping some."""

    def __init__(self, dataset, keep: float = 1.0):
        self.id2label = dict(enumerate(dataset.features["objects"]["category"].feature.names))
        self.truth = {}
        for row in dataset:
            boxes = torch.tensor(row["objects"]["bbox"], dtype=torch.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            keep_n = round(len(boxes) * keep)
            self.truth[(row["image"].height, row["image"].width, row["image"].tobytes()[:64])] = {
                "boxes": boxes[:keep_n],
                "labels": torch.tensor(row["objects"]["category"][:keep_n], dtype=torch.int64),
                "scores": torch.ones(keep_n),
            }

    def __call__(self, images, threshold=0.5):
        return [self.truth[(im.height, im.width, im.tobytes()[:64])] for im in images]


@pytest.mark.parametrize("keep, expected", [(1.0, 1.0), (0.0, 0.0)])
def test_evaluate_images_scores_a_detector_on_the_dataset_images(keep, expected):
    dataset = make_synthetic_dataset(num_train=2, num_val=6, image_size=96, seed=3)["validation"]
    metrics, evaluator = evaluate_images(_Oracle(dataset, keep), dataset, batch_size=4, show_progress=False)
    assert metrics["map_50"] == pytest.approx(expected)
    assert len(evaluator) == len(dataset)
