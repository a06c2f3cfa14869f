"""`detr-hf evaluate` and `detr-hf predict` on a small saved model and dataset."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_DETR, TINY_RESNET
from transformers import ResNetConfig

from detr_hf import DetrConfig, DetrForObjectDetection, DetrImageProcessor
from detr_hf.cli import main
from detr_hf.data import make_synthetic_dataset


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_model")
    torch.manual_seed(0)
    config = DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **{**TINY_DETR, "num_labels": 3})
    config.id2label = {0: "circle", 1: "square", 2: "triangle"}
    DetrForObjectDetection(config).save_pretrained(root / "model")
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(root / "model")
    dataset = make_synthetic_dataset(num_train=4, num_val=6, image_size=64, seed=1)
    dataset.save_to_disk(root / "data")
    return root, dataset


def test_evaluate_prints_the_coco_table_and_writes_metrics(model_and_data, capsys):
    root, _ = model_and_data
    assert (
        main(["evaluate", "--model", str(root / "model"), "--data", str(root / "data"), "--output", str(root / "ev")])
        == 0
    )
    table = capsys.readouterr().out
    assert "AP50" in table and "triangle" in table
    metrics = json.loads((root / "ev" / "eval_results.json").read_text())
    assert 0 <= metrics["map"] <= 1 and set(metrics["map_per_class"]) == {"circle", "square", "triangle"}
    predictions = json.loads((root / "ev" / "predictions.json").read_text())
    assert {p["image_id"] for p in predictions} == set(range(1, 7))


def test_predict_draws_boxes_and_writes_detections(model_and_data, tmp_path):
    root, dataset = model_and_data
    images = tmp_path / "images"
    images.mkdir()
    for i, example in enumerate(dataset["validation"].select(range(3))):
        example["image"].save(images / f"img{i}.png")
    assert (
        main(
            [
                "predict",
                "--model",
                str(root / "model"),
                str(images),
                "--output",
                str(tmp_path / "out"),
                "--threshold",
                "0",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert report["errors"] == []
    detections = {path: entry["detections"] for path, entry in report["images"].items()}
    assert len(detections) == 3 and all(len(found) == TINY_DETR["num_queries"] for found in detections.values())
    assert all(d["label"] in {"circle", "square", "triangle"} for found in detections.values() for d in found)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"img{i}_detections.png" for i in range(3)]
    with pytest.raises(SystemExit, match="neither an image"):
        main(
            ["predict", "--model", str(root / "model"), str(tmp_path / "missing.png"), "--output", str(tmp_path / "o")]
        )
