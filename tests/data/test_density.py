"""Dense scenes: objects per image against the query budget (inspect, recipe), and the large synthetic scenes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from detr_hf.cli import main
from detr_hf.data import detection_features, tile_dataset
from detr_hf.data.density import check_scene_density, objects_per_image, scene_density
from detr_hf.data.synthetic_scenes import make_synthetic_scenes


def _split(counts: list[int], crowd_each: int = 0) -> Dataset:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200)).save(buffer, format="PNG")
    rows = {k: [] for k in ("image_id", "image", "width", "height", "file_name", "objects")}
    for i, n in enumerate(counts):
        total = n + crowd_each
        boxes = [[(k % 19) * 10.0, (k // 19) * 10.0, 8.0, 8.0] for k in range(total)]
        rows["image_id"].append(i + 1)
        rows["image"].append({"bytes": buffer.getvalue(), "path": None})
        rows["width"].append(200)
        rows["height"].append(200)
        rows["file_name"].append(f"{i}.png")
        rows["objects"].append({"id": list(range(total)), "area": [64.0] * total, "bbox": boxes,
                                "category": [0] * total, "iscrowd": [0] * n + [1] * crowd_each,
                                "difficult": [0] * total, "truncated": [0] * total})  # fmt: skip
    return Dataset.from_dict(rows, features=detection_features(["a"]))


def test_objects_per_image_leaves_out_ignore_regions():
    assert objects_per_image(_split([3, 0, 150], crowd_each=2)).tolist() == [3, 0, 150]


def test_warning_names_tiles_and_num_queries(caplog):
    density = scene_density(np.array([10] * 99 + [150]), num_queries=100)
    assert density.max == 150 and density.too_dense and "tiles" in str(density) and "num_queries" in str(density)
    assert not scene_density(np.array([10, 100]), num_queries=100).too_dense  # as many objects as queries is fine
    split = _split([150, 4])
    with caplog.at_level("INFO"):
        tiled = check_scene_density(split, 100, tile_dataset(split, tile_size=64, overlap=0.0, empty_fraction=0.0))
    assert tiled.unit == "tile" and tiled.max < 60 and not tiled.too_dense  # tiles hold fewer objects each
    assert "objects per image: max 150" in caplog.text and "warning" not in caplog.text.lower()


def test_inspect_reports_density_against_num_queries(tmp_path, capsys):
    from datasets import DatasetDict

    DatasetDict({"train": _split([150, 4])}).save_to_disk(tmp_path / "data")
    assert main(["inspect", str(tmp_path / "data"), "--no-plot", "--num-queries", "120"]) == 0
    out = capsys.readouterr().out
    assert "objects per image: max 150, p99" in out and "more objects than the model has queries (150 > 120)" in out


def test_large_scenes_are_deterministic_and_in_range(tmp_path):
    options = dict(min_side=96, max_side=128, min_objects=5, max_objects=12, min_size=6, max_size=16, seed=3)
    first = make_synthetic_scenes(num_train=2, num_val=0, cache_dir=str(tmp_path / "a"), **options)["train"]
    again = make_synthetic_scenes(num_train=2, num_val=0, cache_dir=str(tmp_path / "b"), **options)["train"]
    assert list(first) == list(again)
    sizes = {(row["width"], row["height"]) for row in first}
    assert all(96 <= w <= 128 and 96 <= h <= 128 for w, h in sizes) and len(sizes) == 2
    assert all(5 <= len(row["objects"]["bbox"]) <= 12 for row in first)
    assert all(row["image"].size == (row["width"], row["height"]) for row in first)


def test_coco_max_dets_follow_the_query_budget_on_dense_scenes():
    import torch

    from detr_hf.evaluation import evaluate_images, format_metrics_table

    split = _split([150])

    class Oracle:
        id2label = {0: "a"}

        def __call__(self, images, threshold=0.5):
            boxes = torch.tensor(split[0]["objects"]["bbox"])
            boxes[:, 2:] += boxes[:, :2]
            scores = torch.linspace(1.0, 0.5, len(boxes))
            return [{"scores": scores, "labels": torch.zeros(len(boxes), dtype=torch.int64), "boxes": boxes}]

    capped, _ = evaluate_images(Oracle(), split, show_progress=False)
    budget, _ = evaluate_images(Oracle(), split, show_progress=False, max_detections=200)
    assert capped["mar_100"] == pytest.approx(100 / 150) and budget["mar_200"] == pytest.approx(1.0)
    table = format_metrics_table(budget)
    assert "AR200" in table and "maxDets=200" in table and "maxDets" not in format_metrics_table(capped)
