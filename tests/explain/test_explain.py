"""explain_detections: the drawn sampling points are the ones the attention module computed, and pictures are written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_DETR, TINY_RESNET
from PIL import Image
from transformers import ResNetConfig

from detr_hf import (
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessor,
)
from detr_hf.explain import explain_detections, explain_detector
from detr_hf.explain.figures import save_query_figures
from detr_hf.inference import TorchDetector

BACKBONE = dict(
    embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic",
    out_features=["stage2", "stage3", "stage4"],
)  # fmt: skip
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def _dino() -> DeformableDetrForObjectDetection:
    torch.manual_seed(0)
    config = DeformableDetrConfig.dino_like(
        backbone_config=ResNetConfig(**BACKBONE), **{**TINY_DETR, "num_queries": 8, "encoder_layers": 1}, **NO_DROPOUT
    )
    model = DeformableDetrForObjectDetection(config).eval()
    with torch.no_grad():  # trained-looking offsets: points that move per query and layer, not the init's grid
        for layer in model.model.decoder.layers:
            layer.encoder_attn.sampling_offsets.weight.normal_(0, 0.3)
            layer.encoder_attn.attention_weights.weight.normal_(0, 0.3)
    return model


def _image(width: int = 90, height: int = 60) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _capture_cross_attention(model) -> tuple[list, list]:
    """Forward hooks on every decoder layer's deformable cross-attention and on its offset and weight projections:
    the module's own inputs and raw outputs, independently of what the model returns."""
    calls, handles = [], []
    for layer in model.model.decoder.layers:
        attention, record = layer.encoder_attn, {}
        calls.append(record)

        def on_attention(_module, args, _output, record=record):
            record["reference"], record["shapes"] = args[1].detach().clone(), list(args[3])

        handles.append(attention.register_forward_hook(on_attention))
        for name in ("sampling_offsets", "attention_weights"):
            hook = lambda _m, _a, output, record=record, name=name: record.__setitem__(name, output.detach().clone())  # noqa: E731
            handles.append(getattr(attention, name).register_forward_hook(hook))
    return calls, handles


@pytest.mark.parametrize("size", [(90, 60), (60, 90)])
def test_sampling_points_are_the_attention_modules_in_image_pixels(tmp_path, size):
    model = _dino()
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, use_focal_loss=True)
    image = _image(*size)
    calls, handles = _capture_cross_attention(model)
    try:
        explanation = explain_detections(model, processor, image, top_k=3, threshold=0.0)
    finally:
        for handle in handles:
            handle.remove()
    assert explanation.kind == "deformable" and len(explanation.queries) == 3
    config = model.config
    heads, levels, points = config.decoder_attention_heads, config.num_feature_levels, config.decoder_n_points
    width, height = image.size
    for query in explanation.queries:
        q = query.query
        assert query.sampling_points.shape == (config.decoder_layers, heads, levels, points, 2)
        for layer, record in enumerate(calls):
            # recompute from the module's raw projections: offsets are scaled by the reference box's half size /
            # points; weights are a softmax over each head's levels x points; one unpadded image: [0, 1] = image
            offsets = record["sampling_offsets"][0, q].view(heads, levels, points, 2)
            logits = record["attention_weights"][0, q].view(heads, levels * points)
            weights = logits.softmax(-1).view(heads, levels, points)
            reference = record["reference"][0, q]  # (levels, 4) cx, cy, w, h
            assert reference.shape == (levels, 4)
            centre, half = reference[None, :, None, :2], reference[None, :, None, 2:] / 2
            expected = (centre + offsets / points * half) * torch.tensor([width, height])
            np.testing.assert_allclose(query.sampling_points[layer], expected.numpy(), rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(query.sampling_weights[layer], weights.numpy(), rtol=1e-5, atol=1e-6)
            # the reference box drawn is the one the layer sampled around, in pixels
            ref_xyxy = torch.cat([reference[0, :2] - reference[0, 2:] / 2, reference[0, :2] + reference[0, 2:] / 2])
            np.testing.assert_allclose(
                query.reference_boxes[layer], (ref_xyxy * torch.tensor([width, height] * 2)).numpy(), atol=1e-3
            )
        # the points spread away from the reference (this is not one point per head repeated)
        assert np.ptp(query.sampling_points[-1].reshape(-1, 2), axis=0).min() > 1.0
    # layer i+1 samples around layer i's refined box (iterative refinement), and the last layer's box is the output's
    first = explanation.queries[0]
    np.testing.assert_allclose(first.reference_boxes[1:], first.layer_boxes[:-1], atol=1e-3)
    with torch.no_grad():
        final = model(**processor(images=[image], return_tensors="pt"))
    detected = processor.post_process_object_detection(final, threshold=0.0, target_sizes=[(height, width)], top_k=1)
    np.testing.assert_allclose(first.box, detected[0]["boxes"][0].numpy(), atol=1e-3)
    assert first.score == pytest.approx(float(detected[0]["scores"][0]), abs=1e-5)
    paths = save_query_figures(explanation, tmp_path / "img")
    assert [p.name for p in paths] == [f"img_{i}_query{q.query}.png" for i, q in enumerate(explanation.queries, 1)]
    assert all(Image.open(p).size[0] > 300 for p in paths)


def test_detr_cross_attention_maps_per_layer_and_threshold():
    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR)).eval()
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    image = _image()
    explanation = explain_detections(model, processor, image, top_k=None, threshold=0.0)
    assert explanation.kind == "detr" and len(explanation.queries) == TINY_DETR["num_queries"]
    query = explanation.queries[0]
    assert query.attention_maps.shape == (TINY_DETR["decoder_layers"], 60, 90)
    assert np.allclose(query.attention_maps.max(axis=(1, 2)), 1.0) and query.sampling_points is None
    detected = TorchDetector(model, processor)([image], threshold=0.0)[0]
    np.testing.assert_allclose(query.box, detected["boxes"][0].numpy(), atol=1e-3)
    np.testing.assert_allclose(query.layer_boxes[-1], query.box)
    # the threshold keeps exactly the detections above it
    scores = detected["scores"].tolist()
    gap = next(i for i in range(1, len(scores)) if scores[i - 1] - scores[i] > 1e-4)
    cut = (scores[gap - 1] + scores[gap]) / 2
    assert len(explain_detections(model, processor, image, top_k=None, threshold=cut).queries) == gap
    assert len(explanation.figures()) == len(explanation.queries)


def test_the_visualization_module_offers_the_same_api():
    from detr_hf import visualization

    assert visualization.explain_detections is explain_detections
    with pytest.raises(AttributeError):
        visualization.no_such_name  # noqa: B018


def test_explain_detector_refuses_detectors_without_a_torch_model():
    class OnnxLike:
        id2label = {0: "a"}

        def __call__(self, images, threshold=0.5):
            return []

    with pytest.raises(TypeError, match="cannot explain"):
        explain_detector(OnnxLike())


def test_predict_explain_writes_one_picture_per_detection(tmp_path, capsys):
    from detr_hf.cli import main

    model = _dino()
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, use_focal_loss=True)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    _image().save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tmp_path / "model"), str(tmp_path / "a.png"), "-o", str(out),
                 "--threshold", "0.05", "--explain"]) == 0  # fmt: skip
    report = json.loads((out / "detections.json").read_text(encoding="utf-8"))
    explained = report["images"][str(tmp_path / "a.png")]["explanations"]
    assert len(explained) == len(report["images"][str(tmp_path / "a.png")]["detections"]) >= 1
    assert all((out / name).is_file() for name in explained)
    assert sorted(p.name for p in (out / "explain").iterdir()) == sorted(name.split("/")[-1] for name in explained)
