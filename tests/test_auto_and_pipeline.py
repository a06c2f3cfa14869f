"""transformers integration: Auto classes, pipeline("object-detection") and push_to_hub, offline on local folders."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from conftest import save_tiny_detr
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForObjectDetection, pipeline

from detr_hf import DetrConfig, DetrForObjectDetection, DetrImageProcessor


@pytest.fixture
def saved_model(tmp_path):
    return save_tiny_detr(tmp_path, ["ship", "plane", "car", "tank"], {"shortest_edge": 64, "longest_edge": 96})


def test_auto_classes_resolve_to_detr_hf(saved_model):
    folder, model, _ = saved_model
    assert type(AutoConfig.from_pretrained(folder)) is DetrConfig
    assert type(AutoImageProcessor.from_pretrained(folder)) is DetrImageProcessor
    loaded = AutoModelForObjectDetection.from_pretrained(folder)
    assert type(loaded) is DetrForObjectDetection
    torch.testing.assert_close(loaded.bbox_predictor.layers[0].weight, model.bbox_predictor.layers[0].weight)


def test_object_detection_pipeline_matches_manual_inference(saved_model):
    folder, model, processor = saved_model
    image = Image.fromarray((np.random.default_rng(0).random((80, 120, 3)) * 255).astype("uint8"))
    detector = pipeline("object-detection", model=str(folder), threshold=0.0)
    assert type(detector.model) is DetrForObjectDetection and type(detector.image_processor) is DetrImageProcessor
    found = detector(image)
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    expected = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(80, 120)])[0]
    assert len(found) == len(expected["scores"]) > 0
    best = max(found, key=lambda d: d["score"])
    assert best["score"] == pytest.approx(expected["scores"].max().item(), abs=1e-5)
    assert best["label"] in {"ship", "plane", "car", "tank"}


def test_push_to_hub_uploads_weights_config_and_processor(saved_model, monkeypatch):
    """The real push_to_hub code path, with the Hub client replaced by a recorder (no network here)."""
    _, model, processor = saved_model
    uploaded: dict[str, list[str]] = {}

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            return types.SimpleNamespace(repo_id=repo_id)

        def create_commit(self, repo_id, operations, **kwargs):
            uploaded.setdefault(repo_id, []).extend(op.path_in_repo for op in operations)
            return types.SimpleNamespace(commit_url="local", oid="0")

    import transformers.utils.hub as hub

    monkeypatch.setattr(hub, "hf_api", lambda: RecordingApi())
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *a, **k: types.SimpleNamespace(save=lambda p: None))
    model.push_to_hub("me/my-detr")
    processor.push_to_hub("me/my-detr")
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= set(uploaded["me/my-detr"])
