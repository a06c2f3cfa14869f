"""COCO evaluation: our evaluator against pycocotools run directly, on real and generated data, in 1 and 2 processes."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, free_port, pycocotools_stats
from datasets import Dataset
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_hf.data.formats.coco import annotation_problem
from detr_hf.data.schema import detection_features
from detr_hf.evaluation import CocoEvaluator, coco_ground_truth_from_dataset, format_metrics_table

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ["faster_coco_eval", "pycocotools"]
# COCOeval.stats order, under the names CocoEvaluator.compute() uses
STAT_KEYS = [
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
]


# --------------------------------------------------------------------------------------------------------------------
# References computed by pycocotools itself
# --------------------------------------------------------------------------------------------------------------------


def per_class_reference(gt: dict, results: list[dict]) -> dict[str, dict[str, float]]:
    """Per-class AP, AP50, AR100 by running pycocotools once per category (its summary then covers that class only)."""
    reference: dict[str, dict[str, float]] = {"map_per_class": {}, "map_50_per_class": {}, "mar_100_per_class": {}}
    for category in gt["categories"]:
        stats = pycocotools_stats(gt, results, cat_ids=[category["id"]])
        reference["map_per_class"][category["name"]] = stats[0]
        reference["map_50_per_class"][category["name"]] = stats[1]
        reference["mar_100_per_class"][category["name"]] = stats[8]
    return reference


def assert_stats_close(metrics: dict, stats: np.ndarray, atol: float = 1e-6) -> None:
    ours = np.array([metrics[key] for key in STAT_KEYS])
    np.testing.assert_allclose(ours, np.asarray(stats)[:12], rtol=0, atol=atol, err_msg=str(dict(zip(STAT_KEYS, ours))))


def predictions_from_results(results: list[dict], category_to_label: dict[int, int] | None = None) -> list[dict]:
    """COCO results (xywh) back to post-processed predictions (xyxy tensors), grouped by image, order kept."""
    by_image: dict[int, list[dict]] = {}
    for result in results:
        by_image.setdefault(result["image_id"], []).append(result)
    predictions = []
    for image_id, anns in by_image.items():
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = [a["category_id"] if category_to_label is None else category_to_label[a["category_id"]] for a in anns]
        predictions.append(
            {
                "image_id": image_id,
                "scores": torch.tensor([a["score"] for a in anns], dtype=torch.float64),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "boxes": boxes,
            }
        )
    return predictions


# --------------------------------------------------------------------------------------------------------------------
# Generated data in the package schema
# --------------------------------------------------------------------------------------------------------------------

CLASS_NAMES = ["cat", "dog", "traffic light", "zebra", "unseen"]
SPARSE_IDS = {0: 1, 1: 3, 2: 7, 3: 12, 4: 90}  # source category ids of the 0-based labels


def generated_case(num_images: int = 24, seed: int = 0) -> tuple[list[dict], list[dict], dict]:
    """Rows in the package schema, COCO results for them, and the COCO ground truth written independently.

    Coordinates are multiples of 1/4 and areas float32 numbers, so that the float32 schema and the float64 boxes
    hold exactly the same values. The case has crowd boxes, images without ground truth, images without predictions,
    a class ("unseen") that is only ever predicted, and areas that put a box in another size range than ``w * h``.
    """
    rng = np.random.default_rng(seed)
    rows, results = [], []
    gt = {
        "images": [],
        "annotations": [],
        "categories": [{"id": SPARSE_IDS[k], "name": name} for k, name in enumerate(CLASS_NAMES)],
    }
    for n in range(num_images):
        image_id = 1000 + 7 * n
        width, height = int(rng.integers(64, 400)), int(rng.integers(64, 400))
        num_boxes = 0 if n % 6 == 0 else int(rng.integers(1, 7))
        objects = {"id": [], "area": [], "bbox": [], "category": [], "iscrowd": []}
        for _ in range(num_boxes):
            w = float(rng.integers(4, width * 2) / 4)
            h = float(rng.integers(4, height * 2) / 4)
            x = float(rng.integers(0, int((width - w) * 4) + 1) / 4)
            y = float(rng.integers(0, int((height - h) * 4) + 1) / 4)
            area = float(np.float32(w * h * rng.uniform(0.4, 1.0)))
            objects["id"].append(len(gt["annotations"]) + 1)
            objects["area"].append(area)
            objects["bbox"].append([x, y, w, h])
            objects["category"].append(int(rng.integers(0, 4)))
            objects["iscrowd"].append(int(rng.random() < 0.12))
        rows.append(
            {
                "image_id": image_id,
                "image": None,
                "width": width,
                "height": height,
                "file_name": f"{image_id}.jpg",
                "objects": objects,
            }
        )
        gt["images"].append({"id": image_id, "width": width, "height": height})
        for box, area, label, crowd in zip(objects["bbox"], objects["area"], objects["category"], objects["iscrowd"]):
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": SPARSE_IDS[label],
                    "bbox": box,
                    "area": area,
                    "iscrowd": crowd,
                }
            )
        if n % 5 == 1:
            continue  # an image without predictions
        for box, label in zip(objects["bbox"], objects["category"]):
            if rng.random() < 0.8:  # a detection near the box, sometimes with the wrong class
                x, y, w, h = (np.array(box) + rng.integers(-12, 13, size=4) / 4).tolist()
                label = label if rng.random() < 0.85 else int(rng.integers(0, 5))
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": SPARSE_IDS[label],
                        "bbox": [x, y, max(w, 0.25), max(h, 0.25)],
                        "score": float(rng.random()),
                    }
                )
        for _ in range(int(rng.integers(0, 4))):  # false positives, including the class without ground truth
            w, h = float(rng.integers(8, width * 2) / 4), float(rng.integers(8, height * 2) / 4)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": SPARSE_IDS[int(rng.integers(0, 5))],
                    "bbox": [float(rng.integers(0, 40) / 4), float(rng.integers(0, 40) / 4), w, h],
                    "score": float(rng.random()),
                }
            )
    return rows, results, gt


def schema_dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_list(rows, features=detection_features(CLASS_NAMES))


CATEGORY_TO_LABEL = {v: k for k, v in SPARSE_IDS.items()}


def all_predictions(rows: list[dict], results: list[dict]) -> list[dict]:
    """Predictions for every image, empty ones included, except those the case leaves without any."""
    predictions = {p["image_id"]: p for p in predictions_from_results(results, CATEGORY_TO_LABEL)}
    empty = {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    return [predictions.get(row["image_id"], {"image_id": row["image_id"], **empty}) for row in rows]


@pytest.fixture(scope="module")
def case():
    rows, results, gt = generated_case()
    return schema_dataset(rows), rows, results, gt


# --------------------------------------------------------------------------------------------------------------------
# 1. Real data: COCO val2014 sample with published pycocotools numbers
# --------------------------------------------------------------------------------------------------------------------


def shared(path: str) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA / path


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_sample_matches_published_and_pycocotools(backend):
    gt_path = shared("tests/test_coco_eval/gts/sampled_gts_bbox_area.json")
    results = json.loads(shared("tests/test_coco_eval/cocoapi_results.json").read_text())
    expected = json.loads(shared("EXPECTED_METRICS.json").read_text())["coco_eval_sampled"]["values"]
    gt = json.loads(gt_path.read_text())

    evaluator = CocoEvaluator(gt_path, backend=backend)
    evaluator.update(predictions_from_results(results))
    metrics = evaluator.compute()

    assert_stats_close(metrics, expected)  # published values carry 6 decimals
    assert_stats_close(metrics, pycocotools_stats(gt, results))
    assert set(metrics["map_per_class"]) == {c["name"] for c in gt["categories"]}
    absent = {c["name"] for c in gt["categories"]} - {
        c["name"] for c in gt["categories"] if any(a["category_id"] == c["id"] for a in gt["annotations"])
    }
    assert absent and all(metrics["map_per_class"][name] == -1 for name in absent)
    json.dumps(metrics)  # JSON-ready


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_sample_from_schema_dataset_with_sparse_ids(backend):
    """The same sample as a schema dataset (80 sparse COCO ids -> 0-based labels) against pycocotools on that data."""
    gt = json.loads(shared("tests/test_coco_eval/gts/sampled_gts_bbox_area.json").read_text())
    results = json.loads(shared("tests/test_coco_eval/cocoapi_results.json").read_text())
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    label_to_category = {label: c["id"] for label, c in enumerate(categories)}
    category_to_label = {v: k for k, v in label_to_category.items()}
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in gt["images"]}
    for ann in gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    rows = [
        {
            "image_id": image["id"],
            "image": None,
            "width": image["width"],
            "height": image["height"],
            "file_name": image["file_name"],
            "objects": {
                "id": [a["id"] for a in by_image[image["id"]]],
                "area": [a["area"] for a in by_image[image["id"]]],
                "bbox": [a["bbox"] for a in by_image[image["id"]]],
                "category": [category_to_label[a["category_id"]] for a in by_image[image["id"]]],
                "iscrowd": [a["iscrowd"] for a in by_image[image["id"]]],
            },
        }
        for image in gt["images"]
    ]
    dataset = Dataset.from_list(rows, features=detection_features([c["name"] for c in categories]))
    # the schema stores boxes and areas as float32: the reference must see the same rounded numbers
    gt32 = copy.deepcopy(gt)
    for ann in gt32["annotations"]:
        ann["bbox"] = np.float32(ann["bbox"]).astype(np.float64).tolist()
        ann["area"] = float(np.float32(ann["area"]))

    evaluator = CocoEvaluator(dataset, label_to_category_id=label_to_category, backend=backend)
    evaluator.update(predictions_from_results(results, category_to_label))
    metrics = evaluator.compute()

    assert_stats_close(metrics, pycocotools_stats(gt32, results))
    assert list(metrics["map_per_class"]) == [c["name"] for c in categories]
    # this sample's fake detections sit exactly on IoU thresholds, so float32 rounding moves a few matches
    expected = json.loads(shared("EXPECTED_METRICS.json").read_text())["coco_eval_sampled"]["values"]
    assert_stats_close(metrics, expected, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_voc_database_with_int64_image_ids_and_name_matching(backend):
    """PASCAL VOC boxes in COCO json (image ids beyond int32); the model's labels are matched to categories by name."""
    reference = json.loads(shared("PYCOCOTOOLS_REFERENCE_database.json").read_text())
    gt_path = shared("data/database/gts/coco_format_v2/instances_v2.json")
    gt = json.loads(gt_path.read_text())
    dets = json.loads(shared("data/database/dets/coco_format/coco_dets.json").read_text())
    id2label = {c["id"]: c["name"] for c in dets["categories"]}  # the detector's own 0-based classes
    file_of = {image["id"]: image["file_name"] for image in dets["images"]}
    image_of = {image["file_name"]: image["id"] for image in gt["images"]}
    assert max(image_of.values()) > 2**31
    results = [
        {
            "image_id": image_of[file_of[d["image_id"]]],
            "category_id": d["category_id"],
            "bbox": d["bbox"],
            "score": d["score"],
        }
        for d in dets["annotations"]
    ]

    evaluator = CocoEvaluator(gt_path, id2label=id2label, backend=backend)
    evaluator.update(predictions_from_results(results))
    metrics = evaluator.compute()

    assert_stats_close(metrics, reference["stats"])


# --------------------------------------------------------------------------------------------------------------------
# 2. Generated case against pycocotools
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_generated_case_matches_pycocotools(case, backend):
    dataset, rows, results, gt = case
    evaluator = CocoEvaluator(dataset, label_to_category_id=SPARSE_IDS, backend=backend)
    evaluator.update(all_predictions(rows, results))
    metrics = evaluator.compute()

    assert_stats_close(metrics, pycocotools_stats(gt, results))
    reference = per_class_reference(gt, results)
    for key, per_class in reference.items():
        assert list(metrics[key]) == CLASS_NAMES
        np.testing.assert_allclose(
            [metrics[key][name] for name in CLASS_NAMES], [per_class[name] for name in CLASS_NAMES], rtol=0, atol=1e-6
        )
    assert metrics["map_per_class"]["unseen"] == -1  # predicted but never in the ground truth
    assert all(metrics["map_per_class"][name] > 0 for name in CLASS_NAMES[:4])


def test_ground_truth_conversion_keeps_area_crowd_and_sparse_ids(case):
    dataset, _, _, gt = case
    converted = coco_ground_truth_from_dataset(dataset, label_to_category_id=SPARSE_IDS)
    assert converted["categories"] == gt["categories"]
    assert [{k: i[k] for k in ("id", "width", "height")} for i in converted["images"]] == gt["images"]
    assert converted["annotations"] == gt["annotations"]
    assert any(a["iscrowd"] for a in converted["annotations"])


def test_ground_truth_conversion_never_decodes_images(case):
    _, rows, _, gt = case
    broken = [{**row, "image": {"path": "/nonexistent/missing.jpg", "bytes": None}} for row in rows]
    dataset = schema_dataset(broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        _ = dataset[0]["image"]  # decoding would fail ...
    assert coco_ground_truth_from_dataset(dataset.shuffle(seed=1), SPARSE_IDS)["annotations"]  # ... converting doesn't
    subset = dataset.select([3, 1, 2])
    converted = coco_ground_truth_from_dataset(subset, SPARSE_IDS)
    assert [i["id"] for i in converted["images"]] == [rows[3]["image_id"], rows[1]["image_id"], rows[2]["image_id"]]
    expected = [a["bbox"] for image in (3, 1, 2) for a in gt["annotations"] if a["image_id"] == rows[image]["image_id"]]
    assert [a["bbox"] for a in converted["annotations"]] == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_area_comes_from_the_data_and_crowd_matches_are_ignored(backend):
    rows = [
        {
            "image_id": 1,
            "image": None,
            "width": 200,
            "height": 200,
            "file_name": "1.jpg",
            "objects": {
                "id": [1, 2],
                "area": [900.0, 5000.0],  # a 40x40 box (medium by w*h) whose object area is small
                "bbox": [[10, 10, 40, 40], [100, 100, 80, 80]],
                "category": [0, 0],
                "iscrowd": [0, 1],
            },
        }
    ]
    evaluator = CocoEvaluator(schema_dataset(rows), backend=backend)
    evaluator.update(
        [
            {
                "image_id": 1,
                "scores": torch.tensor([0.9, 0.95]),
                "labels": torch.tensor([0, 0]),
                "boxes": torch.tensor([[10.0, 10, 50, 50], [100, 100, 180, 180]]),  # the higher score hits the crowd
            }
        ]
    )
    metrics = evaluator.compute()
    assert metrics["map"] == pytest.approx(1.0)  # the detection on the crowd region is not a false positive
    assert metrics["map_small"] == pytest.approx(1.0)
    assert metrics["map_medium"] == -1 and metrics["map_large"] == -1


# --------------------------------------------------------------------------------------------------------------------
# 3. Duplicates and distributed evaluation
# --------------------------------------------------------------------------------------------------------------------


def test_repeated_image_ids_are_counted_once(case):
    dataset, rows, results, gt = case
    predictions = all_predictions(rows, results)
    evaluator = CocoEvaluator(dataset, label_to_category_id=SPARSE_IDS)
    evaluator.update(predictions[:10])
    # a padded batch repeats images; a repeat carrying other boxes must not replace the first arrival
    shifted = [{**p, "boxes": p["boxes"] + 30, "scores": p["scores"].flip(0)} for p in predictions[2:5]]
    evaluator.update(shifted + predictions[10:])
    evaluator.update(predictions[:1])
    assert evaluator.num_duplicates == 4
    assert len(evaluator) == len(rows)
    assert_stats_close(evaluator.compute(), pycocotools_stats(gt, results))

    strict = CocoEvaluator(dataset, label_to_category_id=SPARSE_IDS, duplicates="error")
    strict.update(predictions[:3])
    with pytest.raises(ValueError, match=f"image_id {rows[1]['image_id']} arrived twice"):
        strict.update(predictions[1:2])


def test_gather_without_distributed_is_a_no_op_and_guards_misuse(case):
    dataset, rows, results, gt = case
    evaluator = CocoEvaluator(dataset, label_to_category_id=SPARSE_IDS)
    evaluator.update(all_predictions(rows, results))
    evaluator.gather()
    assert len(evaluator) == len(rows) and evaluator.num_duplicates == 0
    assert_stats_close(evaluator.compute(), pycocotools_stats(gt, results))
    with pytest.raises(RuntimeError, match="reset"):
        evaluator.update(all_predictions(rows, results)[:1])
    evaluator.reset()
    assert len(evaluator) == 0


DISTRIBUTED_SCRIPT = """
import json, sys
import torch
from accelerate import Accelerator
from datasets import load_from_disk
from torch.utils.data import DataLoader
from detr_hf.evaluation import CocoEvaluator

work = sys.argv[1]
accelerator = Accelerator(cpu=True)
dataset = load_from_disk(work + "/dataset")
with open(work + "/predictions.json") as f:
    predictions = {int(k): v for k, v in json.load(f).items()}
evaluator = CocoEvaluator(dataset, label_to_category_id={0: 1, 1: 3, 2: 7, 3: 12, 4: 90})
# batch size 2 over an odd number of images on 2 processes: Accelerate pads the last batches with repeats
loader = accelerator.prepare(DataLoader(list(dataset["image_id"]), batch_size=2))


def as_tensors(p):
    return {
        "scores": torch.tensor(p["scores"], dtype=torch.float64),
        "labels": torch.tensor(p["labels"], dtype=torch.int64),
        "boxes": torch.tensor(p["boxes"], dtype=torch.float64).reshape(-1, 4),
    }


for batch in loader:
    ids = batch.tolist()
    evaluator.update([as_tensors(predictions[i]) for i in ids], image_ids=ids)
local = len(evaluator)
evaluator.gather()
out = {"rank": accelerator.process_index, "world": accelerator.num_processes, "local": local,
       "total": len(evaluator), "duplicates": evaluator.num_duplicates, "metrics": evaluator.compute()}
with open(f"{work}/result_{accelerator.process_index}.json", "w") as f:
    json.dump(out, f)
"""


def test_two_process_run_equals_single_process_pycocotools(case, tmp_path):
    dataset, rows, results, gt = case
    dataset = dataset.select(range(len(rows) - 1))  # odd count so that the sampler must pad
    kept = {row["image_id"] for row in rows[:-1]}
    gt = {**gt, "images": [i for i in gt["images"] if i["id"] in kept]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in kept]
    results = [r for r in results if r["image_id"] in kept]
    dataset.save_to_disk(str(tmp_path / "dataset"))
    predictions = {
        p["image_id"]: {"scores": p["scores"].tolist(), "labels": p["labels"].tolist(), "boxes": p["boxes"].tolist()}
        for p in all_predictions(rows[:-1], results)
    }
    (tmp_path / "predictions.json").write_text(json.dumps(predictions))
    (tmp_path / "run.py").write_text(textwrap.dedent(DISTRIBUTED_SCRIPT))

    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    # `accelerate launch --cpu` alone starts a single process (multi-CPU goes through MPI); `--multi_gpu` starts
    # torchrun workers, which `Accelerator(cpu=True)` in the script turns into gloo CPU processes.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
        str(tmp_path / "run.py"),
        str(tmp_path),
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-4000:]

    outputs = [json.loads((tmp_path / f"result_{rank}.json").read_text()) for rank in (0, 1)]
    assert all(o["world"] == 2 for o in outputs)
    assert all(0 < o["local"] < len(kept) for o in outputs)  # each process saw only part of the images
    assert all(o["total"] == len(kept) for o in outputs)
    assert outputs[0]["duplicates"] >= 1  # the padding repeats were dropped
    assert outputs[0]["metrics"] == outputs[1]["metrics"]
    metrics = outputs[0]["metrics"]
    assert_stats_close(metrics, pycocotools_stats(gt, results))
    reference = per_class_reference(gt, results)
    for name in CLASS_NAMES:
        assert metrics["map_per_class"][name] == pytest.approx(reference["map_per_class"][name], abs=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# 4. Table, inputs and errors
# --------------------------------------------------------------------------------------------------------------------


def test_table_lists_every_class_and_the_overall_ap(case):
    dataset, rows, results, _ = case
    evaluator = CocoEvaluator(dataset, label_to_category_id=SPARSE_IDS)
    evaluator.update(all_predictions(rows, results))
    metrics = evaluator.compute()
    table = format_metrics_table(metrics)
    lines = table.splitlines()
    for name in CLASS_NAMES:
        row = next(line for line in lines if line.startswith(name + " "))
        if metrics["map_per_class"][name] < 0:
            assert row.split()[-3:] == ["-", "-", "-"]
        else:
            assert f"{metrics['map_per_class'][name]:.3f}" in row
    assert lines[0].split()[0] == "AP" and lines[1].split()[0] == f"{metrics['map']:.3f}"
    all_row = next(line for line in lines if line.startswith("all "))
    assert all_row.split()[1] == f"{metrics['map']:.3f}"


def test_empty_predictions_and_max_detections(case):
    dataset, rows, results, gt = case
    evaluator = CocoEvaluator(dataset, label_to_category_id=SPARSE_IDS, backend="pycocotools")
    metrics = evaluator.compute()  # nothing predicted: every box missed
    assert metrics["map"] == 0 and metrics["mar_100"] == 0

    capped = CocoEvaluator(dataset, label_to_category_id=SPARSE_IDS, max_detections=2)
    capped.update(all_predictions(rows, results))
    metrics = capped.compute()
    assert {"mar_1", "mar_2", "mar_2_per_class"} <= set(metrics) and "mar_100" not in metrics
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        coco_eval.params.maxDets = [1, 2]
        coco_eval.evaluate()
        coco_eval.accumulate()
    recall = coco_eval.eval["recall"][:, :, 0, 1]  # all areas, maxDets=2
    assert metrics["mar_2"] == pytest.approx(recall[recall > -1].mean(), abs=1e-12)
    assert metrics["mar_1"] <= metrics["mar_2"]


def test_coco_results_round_trip(case):
    dataset, rows, results, _ = case
    evaluator = CocoEvaluator(dataset, label_to_category_id=SPARSE_IDS)
    evaluator.update(all_predictions(rows, results))
    exported = evaluator.coco_results()
    key = lambda r: (r["image_id"], r["score"])  # noqa: E731
    assert sorted(exported, key=key) == sorted(results, key=key)


def test_bad_inputs_raise_clear_errors(case):
    dataset, rows, results, gt = case
    evaluator = CocoEvaluator(dataset, label_to_category_id=SPARSE_IDS)
    prediction = next(p for p in all_predictions(rows, results) if len(p["scores"]) > 1)
    with pytest.raises(ValueError, match=r"image_id 5, which is not in the ground truth"):
        evaluator.update([{**prediction, "image_id": 5}])
    with pytest.raises(ValueError, match="label 9"):
        evaluator.update([{**prediction, "labels": torch.full_like(prediction["labels"], 9)}])
    with pytest.raises(ValueError, match=r"boxes \(n, 4\)"):
        evaluator.update([{**prediction, "boxes": prediction["boxes"][:, :3]}])
    with pytest.raises(ValueError, match="no 'image_id'"):
        evaluator.update([{k: v for k, v in prediction.items() if k != "image_id"}])

    bad_rows = copy.deepcopy(rows)
    bad_rows[2]["objects"]["bbox"][0][2] = -3.0
    with pytest.raises(ValueError, match=rf"record 2 \(image_id {rows[2]['image_id']}\), object 0.*negative width"):
        CocoEvaluator(schema_dataset(bad_rows))
    with pytest.raises(ValueError, match="appears in several records"):
        CocoEvaluator(schema_dataset([rows[1], rows[1]]))
    with pytest.raises(ValueError, match="same category id"):
        CocoEvaluator(dataset, label_to_category_id={0: 1, 1: 1, 2: 2, 3: 3, 4: 4})
    with pytest.raises(ValueError, match="disagree"):
        CocoEvaluator(dataset, id2label=dict(enumerate(reversed(CLASS_NAMES))))
    with pytest.raises(ValueError, match=r"\['ghost'\] of id2label"):
        CocoEvaluator(gt, id2label={0: "cat", 1: "ghost"})
    broken = copy.deepcopy(gt)
    broken["annotations"][3]["category_id"] = 55
    with pytest.raises(ValueError, match=r"annotations\[3\] \(id \d+\): category id 55 is not in 'categories'"):
        CocoEvaluator(broken)
    with pytest.raises(ValueError, match="backend"):
        CocoEvaluator(gt, backend="torchmetrics")


def test_coco_dict_input_is_not_modified_and_matches_schema_input(case):
    dataset, rows, results, gt = case
    original = copy.deepcopy(gt)
    from_dict = CocoEvaluator(gt, id2label=dict(enumerate(CLASS_NAMES)))
    from_dict.update(all_predictions(rows, results))
    from_dataset = CocoEvaluator(dataset, label_to_category_id=SPARSE_IDS)
    from_dataset.update(all_predictions(rows, results))
    assert from_dict.label_to_category_id == SPARSE_IDS
    assert from_dict.compute() == from_dataset.compute()
    assert gt == original


# --------------------------------------------------------------------------------------------------------------------
# 5. A COCO ground truth is checked as the COCO reader checks it
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"image_id": 99}, "image id 99 is not in 'images'"),
        ({"category_id": 55}, "category id 55 is not in 'categories'"),
        ({"image_id": "first"}, "unreadable annotation"),
        ({"bbox": [1.0, 2.0, 3.0]}, "bbox must be [x, y, w, h]"),
    ],
)
def test_a_coco_file_is_refused_for_what_the_reader_leaves_out_in_its_words(case, tmp_path, change, reason):
    _, _, _, gt = case
    broken = copy.deepcopy(gt)
    broken["annotations"][3].update(change)
    image_ids, category_ids = {i["id"] for i in gt["images"]}, {c["id"] for c in gt["categories"]}
    assert reason in annotation_problem(broken["annotations"][3], image_ids, category_ids)
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    ann_id = broken["annotations"][3]["id"]
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(path))}: annotations\[3\] \(id {ann_id}\): .*{re.escape(reason)}"
    ):
        CocoEvaluator(path)


def test_a_coco_file_is_read_as_the_reader_reads_it(case):
    """Ids written as strings, which the reader takes, are scored as the numbers they are."""
    _, rows, results, gt = case
    as_strings = copy.deepcopy(gt)
    for ann in as_strings["annotations"]:
        ann["image_id"], ann["category_id"] = str(ann["image_id"]), str(ann["category_id"])
    evaluator = CocoEvaluator(as_strings, id2label=dict(enumerate(CLASS_NAMES)))
    evaluator.update(all_predictions(rows, results))
    assert_stats_close(evaluator.compute(), pycocotools_stats(gt, results))


def test_a_ground_truth_box_is_scored_as_the_file_has_it(case):
    _, _, _, gt = case
    for change, reason in [
        ({"bbox": [1.0, 2.0, -3.0, 4.0]}, "bbox .* negative width"),
        ({"bbox": [1.0, float("nan"), 3.0, 4.0]}, "bbox .* is not finite"),
        ({"bbox": None, "segmentation": [[0, 0, 10, 0, 10, 10]]}, "no 'bbox'"),
    ]:
        broken = copy.deepcopy(gt)
        broken["annotations"][3].update(change)
        with pytest.raises(ValueError, match=rf"annotations\[3\] \(id \d+\): {reason}"):
            CocoEvaluator(broken)
