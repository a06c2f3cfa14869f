"""ONNX export: round trips of DETR and dino_like, the accuracy gate, the CLI and OnnxDetector on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_DETR, TINY_RESNET, padded_batch
from transformers import ResNetConfig

from detr_hf import (
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessor,
)
from detr_hf.cli import main
from detr_hf.data import make_synthetic_dataset

pytest.importorskip("onnxruntime")
import onnx
import onnxruntime as ort

from detr_hf.inference import TorchDetector, load_inference_detector
from detr_hf.onnx import ExportGateError, OnnxDetector, export_folder, export_graph, gate_artifact, gate_failures

CLASSES = {0: "circle", 1: "square", 2: "triangle"}
DINO_BACKBONE = {
    "model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1],
    "layer_type": "basic", "out_features": ["stage2", "stage3", "stage4"],
}  # fmt: skip


def tiny_detr() -> DetrForObjectDetection:
    torch.manual_seed(0)
    config = DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **{**TINY_DETR, "num_labels": 3})
    config.id2label = dict(CLASSES)
    return DetrForObjectDetection(config).eval()


def tiny_dino() -> DeformableDetrForObjectDetection:
    torch.manual_seed(0)
    options = {**TINY_DETR, "encoder_layers": 1, "decoder_layers": 2, "num_queries": 12, "num_denoising": 12}
    config = DeformableDetrConfig.dino_like(backbone_config=DINO_BACKBONE, **{**options, "num_labels": 3})
    config.id2label = dict(CLASSES)
    return DeformableDetrForObjectDetection(config).eval()


def processor() -> DetrImageProcessor:
    return DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


def differences(session: ort.InferenceSession, model: torch.nn.Module, pixels, mask) -> list[float]:
    """Largest |Δ| of logits and boxes between the ONNX session and the model on one batch."""
    with torch.no_grad():
        reference = model(pixel_values=pixels, pixel_mask=mask)
    logits, boxes = session.run(None, {"pixel_values": pixels.numpy(), "pixel_mask": mask.numpy()})
    return [
        float(np.abs(logits - reference.logits.numpy()).max()),
        float(np.abs(boxes - reference.pred_boxes.numpy()).max()),
    ]


def max_differences(session: ort.InferenceSession, model: torch.nn.Module, sizes: list, seed: int) -> list[float]:
    return differences(session, model, *padded_batch(sizes, seed=seed))


def test_detr_round_trips_with_dynamic_batch_and_size(tmp_path):
    model = tiny_detr()
    example = padded_batch([(64, 96), (80, 64)])
    path = export_graph(model, example, tmp_path / "detr.onnx", dynamic_batch=True, dynamic_size=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert max(max_differences(session, model, [(64, 96), (80, 64)], seed=1)) < 1e-4  # the padded batch
    assert max(max_differences(session, model, [(96, 72), (48, 112), (60, 60)], seed=2)) < 1e-4  # other sizes


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_dino_like_round_trips(tmp_path, dynamic_batch):
    model = tiny_dino()
    example = padded_batch([(64, 96), (80, 64)] if dynamic_batch else [(80, 96)])  # 80x96: the graph's size
    path = export_graph(model, example, tmp_path / "model.onnx", dynamic_batch=dynamic_batch)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"GridSample", "TopK"} <= ops  # deformable sampling and DINO's query selection are in the graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if dynamic_batch:
        assert max(max_differences(session, model, [(64, 96), (80, 64)], seed=1)) < 1e-4  # the padded batch
        assert max(max_differences(session, model, [(80, 96), (40, 70), (72, 50)], seed=2)) < 1e-4
        with pytest.raises(ValueError, match="one image size"):
            export_graph(model, example, tmp_path / "no.onnx", dynamic_size=True)
    else:  # batch 1: a padded image and a full one, one at a time
        pixels, mask = padded_batch([(64, 50), (80, 96)], seed=1)
        for i in range(2):
            assert max(differences(session, model, pixels[i : i + 1], mask[i : i + 1])) < 1e-4


def corrupt_one_weight(path) -> str:
    """Adds 1 to the largest weight of the last class head in the ONNX file; returns its name."""
    graph = onnx.load(str(path))
    heads = [init for init in graph.graph.initializer if "class" in init.name and len(init.dims) == 2]
    target = heads[-1] if heads else max(graph.graph.initializer, key=lambda init: int(np.prod(init.dims)))
    values = onnx.numpy_helper.to_array(target).copy()
    values.flat[np.abs(values).argmax()] += 1.0
    target.CopyFrom(onnx.numpy_helper.from_array(values, target.name))
    onnx.save(graph, str(path))
    return target.name


def test_gate_passes_a_good_artifact_and_fails_a_corrupted_one(tmp_path):
    model = tiny_detr()
    settings = export_folder(model, processor(), tmp_path / "onnx", dynamic_batch=True)
    report = gate_artifact(model, tmp_path / "onnx", settings=settings)
    assert (
        report["passed"] and report["max_abs_diff"]["logits"] < 1e-4 and report["inputs"]["pixel_values"][0] == "batch"
    )
    corrupt_one_weight(tmp_path / "onnx" / "model.onnx")
    with pytest.raises(ExportGateError, match="logits diverged") as error:
        gate_artifact(model, tmp_path / "onnx", settings=settings)
    assert "model.onnx failed the accuracy gate" in str(error.value)
    written = json.loads((tmp_path / "onnx" / "export_report.json").read_text(encoding="utf-8"))
    assert not written["passed"] and written["max_abs_diff"]["logits"] > 1e-3


def test_gate_fails_on_an_map_drop_beyond_the_allowed_one():
    report = {
        "max_abs_diff": {"logits": 2e-6, "pred_boxes": 1e-7},
        "tolerance": {"logits": 1e-3, "pred_boxes": 1e-3},
        "max_ap_drop": 0.001,
        "validation": {"model": {"map": 0.5, "map_50": 0.8}, "artifact": {"map": 0.49, "map_50": 0.79},
                       "map_drop": 0.01},
    }  # fmt: skip
    failures = gate_failures(report)
    assert len(failures) == 3 and "mAP dropped by 0.0100" in failures[0]  # with what the outputs did
    assert failures[1:] == [
        "logits within tolerance: max |Δ| 2e-06 <= 0.001",
        "pred_boxes within tolerance: max |Δ| 1e-07 <= 0.001",
    ]
    report["validation"]["map_drop"] = 0.0005
    assert gate_failures(report) == []
    report["max_abs_diff"]["pred_boxes"] = float("nan")
    assert gate_failures(report) == ["pred_boxes diverged: max |Δ| nan > 0.001"]  # fp32: the outputs must match too
    report["precision"] = "int8"
    assert gate_failures(report) == []  # int8 with a validation split: the mAP decides
    report["validation"] = None
    assert gate_failures(report) == ["pred_boxes diverged: max |Δ| nan > 0.001"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_cli")
    tiny_detr().save_pretrained(root / "model")
    processor().save_pretrained(root / "model")
    dataset = make_synthetic_dataset(num_train=1, num_val=4, image_size=64, seed=1)
    dataset.save_to_disk(root / "data")
    images = root / "images"
    images.mkdir()
    for i, example in enumerate(dataset["validation"]):
        example["image"].save(images / f"img{i}.png")
    return root


def test_cli_export_validates_and_predict_matches_pytorch(saved, capsys):
    out = saved / "onnx"
    assert (
        main(["export", "--model", str(saved / "model"), "--output", str(out), "--validate", str(saved / "data")]) == 0
    )
    report = json.loads((out / "export_report.json").read_text(encoding="utf-8"))
    assert report["passed"] and report["validation"]["images"] == 4 and abs(report["validation"]["map_drop"]) <= 0.001
    assert report["opset"] == 17 and report["inputs"]["pixel_values"] == [1, 3, "height", "width"]
    runs = {}
    for name, model in (("torch", saved / "model"), ("onnx", out / "model.onnx")):
        args = ["predict", "--model", str(model), str(saved / "images"), "-o", str(saved / name), "--threshold", "0"]
        assert main(args) == 0
        runs[name] = json.loads((saved / name / "detections.json").read_text(encoding="utf-8"))["images"]
    assert runs["torch"].keys() == runs["onnx"].keys() and len(runs["torch"]) == 4
    for image, found in runs["torch"].items():
        exported = runs["onnx"][image]["detections"]
        assert len(found["detections"]) == len(exported) == 10  # threshold 0: each query's best class
        for detection in found["detections"]:
            matches = [d for d in exported if d["label"] == detection["label"]
                       and np.abs(np.subtract(d["box_xyxy"], detection["box_xyxy"])).max() <= 0.5]  # fmt: skip
            assert matches, f"{image}: {detection} has no match in the ONNX model's detections"


def test_onnx_detector_and_evaluate_need_no_pytorch_weights(saved, capsys):
    out = saved / "onnx_only"
    export_folder(tiny_detr(), processor(), out, dynamic_batch=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx", "preprocessor_config.json"]
    detector = load_inference_detector(str(out))
    assert isinstance(detector, OnnxDetector) and detector.id2label == CLASSES and detector.fixed_batch is None
    images = [np.zeros((50, 70, 3), np.uint8), np.full((64, 40, 3), 200, np.uint8)]
    results = detector(images, threshold=0.0)
    assert [len(r["scores"]) for r in results] == [10, 10]
    expected = TorchDetector(tiny_detr(), DetrImageProcessor.from_pretrained(str(out)))(images, threshold=0.0)
    for result, reference in zip(results, expected):
        assert torch.equal(result["labels"], reference["labels"])
        assert (result["boxes"] - reference["boxes"]).abs().max() < 0.5
    assert main(["evaluate", "--model", str(out), "--data", str(saved / "data"), "--output", str(saved / "ev")]) == 0
    assert "AP50" in capsys.readouterr().out
    assert {p["image_id"] for p in json.loads((saved / "ev" / "predictions.json").read_text())} == {1, 2, 3, 4}


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_int8_and_fp16_artifacts_are_gated(tmp_path, precision):
    model = tiny_dino() if precision == "fp16" else tiny_detr()  # fp16 dino: Range and GridSample kept fp32
    settings = export_folder(model, processor(), tmp_path, precision=precision, dynamic_batch=True)
    graph = onnx.load(str(tmp_path / "model.onnx"))
    kinds = {init.data_type for init in graph.graph.initializer}
    expected = onnx.TensorProto.INT8 if precision == "int8" else onnx.TensorProto.FLOAT16
    assert expected in kinds
    report = gate_artifact(model, tmp_path, precision, settings=settings)
    assert report["passed"] and report["precision"] == precision and report["max_abs_diff"]["logits"] > 0
    with pytest.raises(ExportGateError, match="logits diverged"):  # the same gate, with a tolerance it cannot meet
        gate_artifact(model, tmp_path, precision, tolerance={"logits": 1e-9})
