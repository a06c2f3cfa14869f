"""Sliced inference: cut objects come back whole, sliced == plain for one tile, bounded memory, the CLI's --slice."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DETR, TINY_RESNET
from datasets import Dataset
from PIL import Image
from transformers import ResNetConfig

from detr_hf import DetrConfig, DetrForObjectDetection, DetrImageProcessor, SlicedDetector, sliced_detection
from detr_hf.data import detection_features
from detr_hf.evaluation import evaluate_images
from detr_hf.inference import Detector, TorchDetector, merge_detections
from detr_hf.tiles import clip_to_window, tile_windows

WIDTH, HEIGHT, TILE = 700, 500, 256


def _coordinate_image() -> Image.Image:
    """Each pixel encodes its own (x, y), so a detector stub can tell which window a tile is."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = np.stack([xs & 255, ys & 255, (xs >> 8) | ((ys >> 8) << 4)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def _scene_boxes() -> tuple[np.ndarray, np.ndarray]:
    """xyxy boxes apart from each other, across every tile edge; two span a whole overlap (whole in no tile)."""
    windows = tile_windows(WIDTH, HEIGHT, TILE, 0.2)
    x_edges = sorted({x for x0, _, x1, _ in windows for x in (x0, x1)} - {0, WIDTH})
    y_edges = sorted({y for _, y0, _, y1 in windows for y in (y0, y1)} - {0, HEIGHT})
    boxes = [(edge - 12, 20 + 30 * k, edge + 14, 44 + 30 * k) for k, edge in enumerate(x_edges)]
    boxes += [(edge - 30, 200 + 40 * k, edge + 30, 230 + 40 * k) for k, edge in enumerate(x_edges)]
    boxes += [(20 + 25 * k, edge - 9, 40 + 25 * k, edge + 11) for k, edge in enumerate(y_edges)]
    boxes += [(195, 440, 266, 470), (400, 440, 471, 470)]  # around the overlaps [205, 256] and [410, 461]
    boxes += [(5, 100, 30, 125), (560, 450, 640, 490), (300, 100, 351, 151)]
    boxes = np.asarray(boxes, dtype=np.float64)
    return boxes, np.arange(len(boxes)) % 3


class _GroundTruthPerTile:
    """A Detector stub: for each tile, the ground truth clipped to it (score = the share of the box inside)."""

    def __init__(self, boxes: np.ndarray, labels: np.ndarray):
        self.boxes, self.labels = boxes, labels
        self.id2label = {0: "a", 1: "b", 2: "c"}
        self.calls: list[int] = []

    def __call__(self, images, threshold=0.5):
        self.calls.append(len(images))
        results = []
        for image in images:
            r, g, b = np.asarray(image)[0, 0].astype(int)
            x0, y0 = r + ((b & 15) << 8), g + ((b >> 4) << 8)
            window = (x0, y0, x0 + image.width, y0 + image.height)
            clipped, visible = clip_to_window(self.boxes, window)
            keep = visible > 0
            results.append(
                {
                    "scores": torch.tensor(visible[keep], dtype=torch.float32),
                    "labels": torch.tensor(self.labels[keep], dtype=torch.int64),
                    "boxes": torch.tensor(clipped[keep], dtype=torch.float32),
                }
            )
        return results


def _ground_truth_dataset(image: Image.Image, boxes: np.ndarray, labels: np.ndarray) -> Dataset:
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    n = len(boxes)
    objects = {"id": list(range(1, n + 1)), "area": (xywh[:, 2] * xywh[:, 3]).tolist(), "bbox": xywh.tolist(),
               "category": labels.tolist(), "iscrowd": [0] * n, "difficult": [0] * n, "truncated": [0] * n}  # fmt: skip
    row = {"image_id": [1], "image": [image], "width": [WIDTH], "height": [HEIGHT], "file_name": ["scene.png"],
           "objects": [objects]}  # fmt: skip
    return Dataset.from_dict(row, features=detection_features(["a", "b", "c"]))


@pytest.mark.parametrize("merge", ["nmm", "nms"])
def test_ground_truth_per_tile_comes_back_whole_with_ap_1(merge):
    boxes, labels = _scene_boxes()
    stub = _GroundTruthPerTile(boxes, labels)
    image = _coordinate_image()
    result = sliced_detection(stub, None, image, tile_size=TILE, overlap=0.2, batch_size=4, full_image_pass=False,
                              merge=merge, match_metric="ios", threshold=0.0)  # fmt: skip
    windows = tile_windows(WIDTH, HEIGHT, TILE, 0.2)
    assert stub.calls == [4] * (len(windows) // 4) + ([len(windows) % 4] if len(windows) % 4 else [])  # batched
    if merge == "nmm":  # every box, cut or not, is the union of its parts: exactly the ground truth
        got = sorted(map(tuple, result["boxes"].round(decimals=3).tolist()))
        assert got == sorted(map(tuple, boxes.tolist()))
    sliced = SlicedDetector(stub, tile_size=TILE, overlap=0.2, full_image_pass=False, merge=merge)
    assert isinstance(sliced, Detector)
    metrics, _ = evaluate_images(sliced, _ground_truth_dataset(image, boxes, labels), show_progress=False)
    if merge == "nmm":
        assert metrics["map"] == pytest.approx(1.0)
    else:  # NMS keeps the best part: whole where a tile holds the object whole; the 80 px ones lose their tail
        assert metrics["map_50"] == pytest.approx(1.0)


def test_merging_is_per_class_and_by_the_chosen_metric():
    fragment, whole = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 40.0]  # IoS 1, IoU 0.25
    detections = {"scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 0, 1]),
                  "boxes": torch.tensor([fragment, whole, whole])}  # fmt: skip
    merged = merge_detections(detections, "nmm", "ios", 0.5)
    assert merged["boxes"].tolist() == [whole, whole] and merged["labels"].tolist() == [0, 1]
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert len(merge_detections(detections, "nms", "iou", 0.5)["scores"]) == 3  # IoU 0.25: not the same object
    kept = merge_detections(detections, "nms", "ios", 0.5)
    assert kept["boxes"].tolist() == [fragment, whole]
    with pytest.raises(ValueError, match="merge"):
        merge_detections(detections, "wbf")


def test_sliced_equals_plain_when_one_tile_covers_the_image():
    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **TINY_DETR))
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8))
    plain = TorchDetector(model, processor)([image], threshold=0.0)[0]
    sliced = sliced_detection(model, processor, image, tile_size=256, threshold=0.0)
    assert len(plain["scores"]) == TINY_DETR["num_queries"]
    for key in ("scores", "labels", "boxes"):
        torch.testing.assert_close(sliced[key], plain[key])


_MEMORY_SCRIPT = """
import sys, torch
from PIL import Image
from detr_hf.inference.sliced import sliced_detection

def peak_mib():  # the process's high-water mark (ru_maxrss would include the parent's: it survives exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

class Nothing:
    id2label = {0: "a"}
    def __init__(self):
        self.tiles = 0
    def __call__(self, images, threshold=0.5):
        self.tiles += len(images)
        return [{"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
                for _ in images]

sliced_detection(Nothing(), None, Image.new("RGB", (1200, 1200)), tile_size=512)  # warm-up: torch's first calls
detector = Nothing()
before = peak_mib()
sliced_detection(detector, None, sys.argv[1], tile_size=512, overlap=0.2, batch_size=8)
print(detector.tiles, peak_mib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")
def test_an_8000_px_png_is_sliced_holding_one_decoded_copy(tmp_path):
    path = tmp_path / "large.png"
    canvas = Image.new("RGB", (8000, 8000), (40, 90, 160))
    canvas.paste((200, 30, 30), (1000, 1000, 5000, 3000))
    canvas.save(path, compress_level=1)
    del canvas
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_MEMORY_SCRIPT), str(path)], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    tiles, grown_mib = out.stdout.split()
    side = math.ceil((8000 - 512) / round(512 * 0.8)) + 1
    assert int(tiles) == side * side + 1  # every tile and the full-image pass
    one_copy_mib = 8000 * 8000 * 4 / 2**20  # PIL stores RGB as 4 bytes a pixel: 244 MiB
    assert 0.7 * one_copy_mib < float(grown_mib) < 1.5 * one_copy_mib, grown_mib


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("sliced_cli")
    torch.manual_seed(0)
    config = DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **{**TINY_DETR, "num_labels": 3})
    config.id2label = {0: "circle", 1: "square", 2: "triangle"}
    DetrForObjectDetection(config).save_pretrained(root / "model")
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(root / "model")
    return root


def test_predict_slice_draws_images_and_writes_detections(saved_model, tmp_path):
    from detr_hf.cli import main

    images = tmp_path / "big"
    images.mkdir()
    _coordinate_image().save(images / "scene.png")
    code = main(["predict", "--model", str(saved_model / "model"), str(images), "--output", str(tmp_path / "out"),
                 "--threshold", "0", "--slice", "256", "--overlap", "0.2", "--merge", "nms",
                 "--no-full-image-pass"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    found = report["images"][str(images / "scene.png")]["detections"]
    # 12 tiles of 10 queries each, merged; boxes mapped back to the image (tiles start at x 0, 205, 410, 444)
    assert 0 < len(found) <= 12 * TINY_DETR["num_queries"]
    assert max(d["box_xyxy"][0] for d in found) >= 205
    assert all(0 <= d["box_xyxy"][0] <= d["box_xyxy"][2] <= WIDTH for d in found)
    assert Image.open(tmp_path / "out" / "scene_detections.png").size == (WIDTH, HEIGHT)


def test_evaluate_slice_prints_the_coco_table_on_full_images(saved_model, tmp_path, capsys):
    from detr_hf.cli import main
    from detr_hf.data import make_synthetic_dataset

    make_synthetic_dataset(num_train=1, num_val=2, image_size=(160, 300), seed=2).save_to_disk(tmp_path / "data")
    code = main(["evaluate", "--model", str(saved_model / "model"), "--data", str(tmp_path / "data"),
                 "--slice", "128", "--output", str(tmp_path / "ev")])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "AP50" in table and "AR100" in table
    sliced = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    assert {p["image_id"] for p in sliced} == {1, 2}
    assert all(x >= 0 and y >= 0 and x + w <= 300 + 1e-3 and y + h <= 160 + 1e-3 for x, y, w, h in
               (p["bbox"] for p in sliced))  # fmt: skip
    main(["evaluate", "--model", str(saved_model / "model"), "--data", str(tmp_path / "data"),
          "--output", str(tmp_path / "plain")])  # fmt: skip
    plain = json.loads((tmp_path / "plain" / "predictions.json").read_text())
    assert sorted(p["bbox"] for p in plain) != sorted(p["bbox"] for p in sliced)  # the tiles were used
