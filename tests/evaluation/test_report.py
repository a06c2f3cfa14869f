"""The report folder: every part written, numbers consistent with COCO, the model card's section."""

from __future__ import annotations

import json

import pytest
from report_fixtures import OverconfidentStub, detection_split, random_objects

from detr_hf.evaluation import evaluate_images
from detr_hf.evaluation.report import write_report
from detr_hf.evaluation.report_markdown import model_card_section


def test_report_folder_holds_every_part(tmp_path):
    truth = random_objects(60, seed=21)
    dataset = detection_split(truth)
    metrics, evaluator = evaluate_images(OverconfidentStub(truth), dataset, show_progress=False)
    report = write_report(tmp_path / "report", evaluator, dataset, num_resamples=100, gallery_size=10)
    files = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"report.md", "report.json", "errors.json", "pr_curves.png", "confusion_matrix.png", "reliability.png",
            "false_positives.png", "missed.png"} <= files  # fmt: skip
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["detection_thresholds"] == report["detection_thresholds"]
    assert set(saved["detection_thresholds"]) == {"0", "1", "2"}
    assert saved["bootstrap"]["point"]["map"] == pytest.approx(metrics["map"])
    for _name, row in saved["per_class"].items():
        low, high = row["ap_interval_95"]
        assert low <= row["ap"] <= high
        assert row["precision_interval_95"][0] <= row["precision"] <= row["precision_interval_95"][1]
    assert saved["calibration"]["ece_after"] < saved["calibration"]["ece_before"]
    counts = saved["confusion_matrix"]["counts"]
    assert sum(map(sum, counts[:3])) == sum(len(objects) for objects in truth.values())  # each object once
    errors = json.loads((tmp_path / "report" / "errors.json").read_text())
    assert {e["kind"] for e in errors} == {"false_positive", "missed"}
    assert all(e["file_name"].startswith("img_") for e in errors)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert f"{metrics['map']:.3f} [" in markdown and "reliability.png" in markdown

    card = "\n".join(model_card_section(tmp_path))
    assert "| a |" in card and "report/pr_curves.png" in card and "threshold" in card
    assert model_card_section(tmp_path / "nowhere") == []
