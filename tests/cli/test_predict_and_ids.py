"""predictions.json in the source's category ids, `detr-hf predict` on awkward images, and eval_dataloader's sizes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_DETR, TINY_RESNET, pycocotools_stats
from data_fixtures import write_image
from PIL import Image
from transformers import ResNetConfig

from detr_hf import DetrConfig, DetrForObjectDetection, DetrImageProcessor
from detr_hf.cli import main
from detr_hf.data import DatasetValidationError, load_detection_dataset
from detr_hf.evaluation import CocoEvaluator
from detr_hf.image_processing_detr import get_resize_output_size

# Sparse ids: converted as they are, the labels are person=0, car=1, dog=2 (id order), none equal to its id. The
# `converted` fixture also picks its own class order, dog=0, person=1, car=2, which sorting by id would not give.
CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
# image id -> (file, width, height, [(category id, [x, y, w, h])])
IMAGES = {
    10: ("a.jpg", 64, 48, [(7, [4, 6, 26, 34]), (3, [32, 8, 28, 36])]),
    20: ("b.png", 40, 60, [(1, [2, 3, 30, 50])]),
    30: ("c.jpg", 50, 50, [(3, [10, 10, 20, 20]), (1, [30, 5, 15, 40]), (7, [1, 30, 20, 18])]),
}


def write_source(root: Path) -> Path:
    """A COCO export (one validation file) with the sparse ids above; returns the annotation file."""
    images, annotations = [], []
    for image_id, (name, w, h, objects) in IMAGES.items():
        write_image(root / name, w, h, seed=image_id)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for category_id, bbox in objects:
            annotations.append(
                {
                    "id": 500 + len(annotations),
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    path = root / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def perfect_predictions(class_names: list[str]) -> dict[int, dict[str, torch.Tensor]]:
    """Image id -> post-processed detections equal to the ground truth, in model labels (xyxy, score 1)."""
    label_of = {c["id"]: class_names.index(c["name"]) for c in CATEGORIES}
    out = {}
    for image_id, (_, _, _, objects) in IMAGES.items():
        boxes = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in objects], dtype=torch.float32)
        labels = torch.tensor([label_of[c] for c, _ in objects])
        out[image_id] = {"boxes": boxes, "labels": labels, "scores": torch.ones(len(objects))}
    return out


def ap_against_original(annotation_file: Path, predictions_file: Path) -> float:
    """COCO AP of predictions.json scored by plain pycocotools against the original annotation file."""
    return float(pycocotools_stats(annotation_file, predictions_file)[0])


@pytest.fixture
def converted(tmp_path):
    annotation_file = write_source(tmp_path / "source")
    dataset = load_detection_dataset(
        tmp_path / "source", format="coco", class_names=["dog", "person", "car"], verbose=False
    )["validation"]
    return annotation_file, dataset


# -- 1. category ids ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_coco_results_use_source_ids_and_score_against_the_original_file(converted, tmp_path, backend):
    annotation_file, dataset = converted
    names = dataset.features["objects"]["category"].feature.names
    assert names == ["dog", "person", "car"]
    evaluator = CocoEvaluator(dataset, backend=backend)
    predictions = perfect_predictions(names)
    evaluator.update(list(predictions.values()), image_ids=list(predictions))
    results = evaluator.coco_results()
    assert {r["category_id"] for r in results} == {1, 3, 7}
    assert sorted((r["image_id"], r["category_id"]) for r in results) == sorted(
        (i, c) for i, (_, _, _, objects) in IMAGES.items() for c, _ in objects
    )
    predictions_file = tmp_path / "predictions.json"
    predictions_file.write_text(json.dumps(results))
    assert ap_against_original(annotation_file, predictions_file) == pytest.approx(1.0)
    metrics = evaluator.compute()
    assert metrics["map"] == pytest.approx(1.0)
    assert list(metrics["map_per_class"]) == ["dog", "person", "car"]  # label order, not id order


def test_a_wrong_class_still_costs_ap_against_the_original_file(converted, tmp_path):
    annotation_file, dataset = converted
    names = dataset.features["objects"]["category"].feature.names
    evaluator = CocoEvaluator(dataset)
    predictions = perfect_predictions(names)
    predictions[20]["labels"] = torch.tensor([names.index("car")])  # person called a car
    evaluator.update(list(predictions.values()), image_ids=list(predictions))
    (tmp_path / "predictions.json").write_text(json.dumps(evaluator.coco_results()))
    ours = evaluator.compute()["map"]
    assert ours < 1.0
    assert ap_against_original(annotation_file, tmp_path / "predictions.json") == pytest.approx(ours)


def test_a_dataset_without_source_ids_keeps_label_ids():
    from detr_hf.data import make_synthetic_dataset

    dataset = make_synthetic_dataset(num_train=0, num_val=2, image_size=64, seed=0)["validation"]
    evaluator = CocoEvaluator(dataset)
    assert evaluator.label_to_category_id == {0: 0, 1: 1, 2: 2}


class _TinyStubModel(torch.nn.Module):
    """Stands in for a detector: evaluate_detector only needs its config, a parameter, and a call."""

    def __init__(self, id2label: dict[int, str]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(id2label=id2label)

    def forward(self, pixel_values, pixel_mask):
        return {"batch_size": len(pixel_values)}


class _OracleProcessor(DetrImageProcessor):
    """Collates like the real processor; post-processing returns the ground truth of the next images in order."""

    def post_process_object_detection(self, outputs, threshold=0.5, target_sizes=None):
        batch, self.queue = self.queue[: outputs["batch_size"]], self.queue[outputs["batch_size"] :]
        for (expected_size, _), size in zip(batch, target_sizes):
            assert tuple(expected_size) == tuple(size)
        return [prediction for _, prediction in batch]


def test_detr_hf_evaluate_writes_predictions_json_in_source_ids(tmp_path, monkeypatch):
    annotation_file = write_source(tmp_path / "source")
    dataset = load_detection_dataset(tmp_path / "source", format="coco", verbose=False)["validation"]
    names = dataset.features["objects"]["category"].feature.names
    assert names == ["person", "car", "dog"]
    predictions = perfect_predictions(names)
    processor = _OracleProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    processor.queue = [
        ((h, w), predictions[i]) for i, w, h in zip(dataset["image_id"], dataset["width"], dataset["height"])
    ]
    model = _TinyStubModel(dict(enumerate(names)))
    monkeypatch.setattr("detr_hf.cli.model.load_detector", lambda folder: (model, processor))
    args = ["evaluate", "--model", "stub", "--data", str(tmp_path / "source"), "--output", str(tmp_path / "ev")]
    assert main(args) == 0
    assert processor.queue == []
    written = json.loads((tmp_path / "ev" / "predictions.json").read_text(encoding="utf-8"))
    assert {p["category_id"] for p in written} == {1, 3, 7}
    assert ap_against_original(annotation_file, tmp_path / "ev" / "predictions.json") == pytest.approx(1.0)


# -- 2. decoding -------------------------------------------------------------------------------------------------


def _ramp16(width: int = 64, height: int = 16) -> np.ndarray:
    return np.linspace(0, 65535, width * height).reshape(height, width).astype(np.uint16)


def test_decode_image_keeps_the_top_8_bits_of_a_16_bit_png(tmp_path):
    from detr_hf.imaging import decode_image

    ramp = _ramp16()
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode.startswith("I")
    decoded = decode_image(tmp_path / "ramp.png")
    assert decoded.mode == "RGB" and decoded.size == (64, 16)
    array = np.asarray(decoded)
    np.testing.assert_array_equal(array, np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2))
    assert (array == 255).mean() < 0.01


def test_decode_image_scales_float_images_in_0_1(tmp_path):
    from detr_hf.imaging import decode_image

    values = np.linspace(0, 1, 40 * 10, dtype=np.float32).reshape(10, 40)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    array = np.asarray(decode_image(tmp_path / "float.tif"))
    np.testing.assert_array_equal(array[..., 0], (values * 255).astype(np.uint8))


def test_decode_image_applies_exif_orientation_and_accepts_bytes(tmp_path):
    from detr_hf.imaging import decode_image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 20, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    decoded = decode_image(buffer.getvalue())
    assert decoded.size == (10, 20) and decoded.mode == "RGB"


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "L", "I;16", "F", "CMYK"])
def test_decode_image_gives_the_pixels_conversion_stores(tmp_path, mode):
    from detr_hf.imaging import decode_image

    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(_ramp16(40, 30))
    elif mode == "F":
        image = Image.fromarray(rng.random((30, 40), dtype=np.float32), mode="F")
    else:
        image = rgb.convert(mode)
    name = {"F": "x.tif", "CMYK": "x.jpg", "I;16": "x.png"}.get(mode, "x.png")
    image.save(tmp_path / name)
    coco = {
        "images": [{"id": 1, "file_name": name, "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "instances_val.json").write_text(json.dumps(coco))
    dataset = load_detection_dataset(tmp_path, format="coco", verbose=False)["validation"]
    stored = np.asarray(dataset[0]["image"])
    np.testing.assert_array_equal(np.asarray(decode_image(tmp_path / name)), stored)


def test_decode_image_names_a_file_that_does_not_decode(tmp_path):
    from detr_hf.imaging import decode_image

    good = write_image(tmp_path / "good.jpg", 64, 64)
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "notes.png").write_text("not an image", encoding="utf-8")
    for name in ("cut.jpg", "notes.png"):
        with pytest.raises(DatasetValidationError, match=name):
            decode_image(tmp_path / name)
    with pytest.raises(DatasetValidationError, match="upload 7"):
        decode_image(good.read_bytes()[:300], name="upload 7")


# -- 2. detr-hf predict ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict_model") / "model"
    torch.manual_seed(0)
    config = DetrConfig(backbone_config=ResNetConfig(**TINY_RESNET), **{**TINY_DETR, "num_labels": 3})
    config.id2label = {0: "circle", 1: "square", 2: "triangle"}
    DetrForObjectDetection(config).save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(folder)
    return folder


def _predict(model: Path, inputs: list[Path], out: Path, threshold: str = "2") -> int:
    # threshold 2: no detection passes, so each drawing is exactly the decoded image
    return main(["predict", "--model", str(model), *map(str, inputs), "--output", str(out), "--threshold", threshold])


def test_predict_draws_a_16_bit_png_without_saturating_it(tiny_model, tmp_path):
    ramp = _ramp16()
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert _predict(tiny_model, [tmp_path / "ramp.png"], tmp_path / "out") == 0
    drawn = np.asarray(Image.open(tmp_path / "out" / "ramp_detections.png").convert("RGB"))
    np.testing.assert_array_equal(drawn[..., 1], (ramp >> 8).astype(np.uint8))


def test_predict_gives_images_with_the_same_stem_their_own_drawings(tiny_model, tmp_path):
    colours = {"a/x.png": (200, 0, 0), "b/x.png": (0, 200, 0), "x.jpg": (0, 0, 200), "x.png": (90, 90, 90)}
    for name, colour in colours.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), colour).save(tmp_path / "in" / name)
    other = tmp_path / "elsewhere" / "x.png"  # same name as in/x.png, given as a file
    other.parent.mkdir()
    Image.new("RGB", (24, 16), (250, 250, 0)).save(other)
    colours[str(other)] = (250, 250, 0)
    assert _predict(tiny_model, [tmp_path / "in", other], tmp_path / "out") == 0
    assert len(list((tmp_path / "out").rglob("*_detections.png"))) == 5
    report = json.loads((tmp_path / "out" / "detections.json").read_text(encoding="utf-8"))
    assert report["errors"] == []
    drawings = {Path(path): entry["drawing"] for path, entry in report["images"].items()}
    assert len(set(drawings.values())) == 5
    assert drawings[tmp_path / "in" / "a" / "x.png"] == "a/x_detections.png"
    assert drawings[tmp_path / "in" / "x.jpg"] == "x_detections.png"
    for name, colour in colours.items():
        path = Path(name) if Path(name).is_absolute() else tmp_path / "in" / name
        drawn = np.asarray(Image.open(tmp_path / "out" / drawings[path]).convert("RGB"), dtype=float)
        np.testing.assert_allclose(drawn.reshape(-1, 3).mean(axis=0), colour, atol=3)


def test_predict_names_an_undecodable_image_and_goes_on(tiny_model, tmp_path, capsys):
    write_image(tmp_path / "in" / "first.png", 32, 24, seed=1)
    good = write_image(tmp_path / "in" / "second.jpg", 40, 32, seed=2)
    (tmp_path / "in" / "broken.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    write_image(tmp_path / "in" / "third.png", 20, 30, seed=3)
    status = main(
        ["predict", "--model", str(tiny_model), str(tmp_path / "in"), "--output", str(tmp_path / "out"),
         "--threshold", "0", "--batch-size", "2"]
    )  # fmt: skip
    assert status == 1
    assert "broken.jpg" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "detections.json").read_text(encoding="utf-8"))
    assert [Path(e["image"]).name for e in report["errors"]] == ["broken.jpg"]
    assert "broken.jpg" in report["errors"][0]["error"]
    assert sorted(Path(p).name for p in report["images"]) == ["first.png", "second.jpg", "third.png"]
    assert all(len(entry["detections"]) == TINY_DETR["num_queries"] for entry in report["images"].values())
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "first_detections.png",
        "second_detections.png",
        "third_detections.png",
    ]


# -- 3. eval_dataloader sizes ------------------------------------------------------------------------------------


def _transformers_pil_processor(*, size: dict):
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    return DetrImageProcessorPil(size=size)


@pytest.mark.parametrize(
    "make, size",
    [
        (DetrImageProcessor, {"shortest_edge": 32, "longest_edge": 40}),
        (DetrImageProcessor, {"shortest_edge": 36}),
        (DetrImageProcessor, {"height": 40, "width": 56}),
        (DetrImageProcessor, {"max_height": 36, "max_width": 48}),
        (_transformers_pil_processor, {"max_height": 36, "max_width": 48}),
        (_transformers_pil_processor, {"height": 40, "width": 56}),
    ],
)
def test_eval_dataloader_resizes_by_every_size_form(converted, make, size):
    from detr_hf.evaluation import eval_dataloader

    _, dataset = converted
    processor = make(size=size)
    sizes = []
    for batch in eval_dataloader(dataset, processor, batch_size=1):
        mask = batch["pixel_mask"][0].bool()
        sizes.append((int(mask.any(1).sum()), int(mask.any(0).sum())))
        assert tuple(batch["labels"][0]["orig_size"].tolist()) == (dataset[len(sizes) - 1]["height"],
                                                                    dataset[len(sizes) - 1]["width"])  # fmt: skip
    expected = [get_resize_output_size(h, w, size) for h, w in zip(dataset["height"], dataset["width"])]
    # the processor truncates, albumentations rounds: a pixel apart at most
    assert np.abs(np.subtract(sizes, expected)).max() <= 1, (sizes, expected)
