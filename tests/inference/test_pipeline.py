"""pipeline("sliced-object-detection"): the same detections as sliced_detection, plain inference for one tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import save_tiny_detr
from PIL import Image
from transformers import pipeline

from detr_hf import SlicedObjectDetectionPipeline
from detr_hf.inference import sliced_detection


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return save_tiny_detr(
        tmp_path_factory.mktemp("sliced_pipeline"), ["ship", "plane"], {"shortest_edge": 64, "longest_edge": 64}
    )


@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.default_rng(0).random((150, 230, 3)) * 255).astype("uint8"))


def _as_tuples(found: list[dict]) -> list[tuple]:
    return [(round(d["score"], 5), d["label"], tuple(d["box"].values())) for d in found]


def test_sliced_pipeline_returns_sliced_detection_in_the_pipeline_format(saved_model, image, tmp_path):
    folder, model, processor = saved_model
    detector = pipeline("sliced-object-detection", model=str(folder))
    assert isinstance(detector, SlicedObjectDetectionPipeline)
    options = dict(tile_size=96, overlap=0.25, full_image_pass=True, full_image_size=128, merge="nms", threshold=0.0)
    path = tmp_path / "scene.png"
    image.save(path)
    found = detector(str(path), slice_batch_size=3, **options)
    expected = sliced_detection(model, processor, image, batch_size=3, **options)
    assert len(found) == len(expected["scores"]) > 0
    assert [d["label"] for d in found] == [model.config.id2label[i] for i in expected["labels"].tolist()]
    assert [d["score"] for d in found] == pytest.approx(expected["scores"].tolist(), abs=1e-5)
    boxes = torch.tensor([list(d["box"].values()) for d in found])
    assert torch.equal(boxes, expected["boxes"].int())
    assert boxes[:, 2].max() <= 230 and boxes[:, 3].max() <= 150  # image pixels, not tile pixels


def test_one_tile_covering_the_image_is_plain_object_detection(saved_model, image):
    folder, _, _ = saved_model
    sliced = pipeline("sliced-object-detection", model=str(folder))
    plain = pipeline("object-detection", model=str(folder))
    assert _as_tuples(sliced(image, tile_size=256, threshold=0.1)) == _as_tuples(plain(image, threshold=0.1))


def test_unknown_option_is_refused_by_name(saved_model, image):
    detector = pipeline("sliced-object-detection", model=str(saved_model[0]))
    with pytest.raises(TypeError, match="tile_sise"):
        detector(image, tile_sise=256)
