"""`detr-hf evaluate --report DIR --save-operating-point`, then `detr-hf predict --threshold auto`."""

from __future__ import annotations

import json

import torch
from conftest import TINY_DETR, TINY_RESNET
from datasets import DatasetDict
from report_fixtures import CLASSES, detection_split, random_objects
from transformers import ResNetConfig

from detr_hf import DetrConfig, DetrForObjectDetection, DetrImageProcessor
from detr_hf.cli import main


def test_evaluate_report_saves_thresholds_that_predict_auto_uses(tmp_path, capsys):
    torch.manual_seed(0)
    config = DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **{**TINY_DETR, "num_labels": 3})
    config.id2label = dict(enumerate(CLASSES))
    DetrForObjectDetection(config).save_pretrained(tmp_path / "model")
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(tmp_path / "model")
    split = detection_split(random_objects(8, seed=4))
    DatasetDict({"train": split, "validation": split}).save_to_disk(tmp_path / "data")
    model, report = str(tmp_path / "model"), tmp_path / "report"
    argv = ["evaluate", "--model", model, "--data", str(tmp_path / "data"), "--report", str(report),
            "--save-operating-point", "--resamples", "50"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mAP50" in out and "report.md" in out
    saved = json.loads((report / "report.json").read_text())
    config_json = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config_json["detection_thresholds"] == saved["detection_thresholds"]

    split.select([0])[0]["image"].save(tmp_path / "one.png")
    assert main(["predict", "--model", model, str(tmp_path / "one.png"), "-o", str(tmp_path / "pred"),
                 "--threshold", "auto"]) == 0  # fmt: skip
    found = json.loads((tmp_path / "pred" / "detections.json").read_text())["images"]
    (entry,) = found.values()
    thresholds = {CLASSES[int(k)]: v for k, v in saved["detection_thresholds"].items()}
    assert all(d["score"] >= round(thresholds[d["label"]], 4) for d in entry["detections"])
