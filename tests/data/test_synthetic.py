"""The synthetic shapes dataset: determinism, schema validity, label honesty, difficulty; and draw_detections."""

from __future__ import annotations

import io

import cv2
import datasets
import numpy as np
import PIL.Image
import pytest

from detr_hf.data import synthetic
from detr_hf.data.schema import detection_features
from detr_hf.data.synthetic import (
    AVAILABLE_SHAPES,
    SyntheticShapesConfig,
    generate_image,
    image_rng,
    make_synthetic_dataset,
)
from detr_hf.visualization import draw_detections, image_grid, label_color


def png_bytes(dataset) -> list[bytes]:
    return [row["bytes"] for row in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small default-settings dataset shared by the read-only tests."""
    return make_synthetic_dataset(num_train=96, num_val=24, seed=3, cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    first = make_synthetic_dataset(num_train=6, num_val=3, seed=7, cache_dir=str(tmp_path / "a"))
    again = make_synthetic_dataset(num_train=6, num_val=3, seed=7, cache_dir=str(tmp_path / "b"))
    other = make_synthetic_dataset(num_train=6, num_val=3, seed=8, cache_dir=str(tmp_path / "c"))
    for split in ("train", "validation"):
        assert png_bytes(first[split]) == png_bytes(again[split])
        assert first[split]["objects"] == again[split]["objects"]
    assert not set(png_bytes(first["train"])) & set(png_bytes(other["train"]))


def test_num_proc_gives_the_same_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "_CHUNK", 4)  # several shards, so two workers really split the work
    serial = make_synthetic_dataset(num_train=16, num_val=4, seed=1, num_proc=1, cache_dir=str(tmp_path / "serial"))
    parallel = make_synthetic_dataset(num_train=16, num_val=4, seed=1, num_proc=2, cache_dir=str(tmp_path / "par"))
    for split in ("train", "validation"):
        assert png_bytes(serial[split]) == png_bytes(parallel[split])
        assert serial[split]["objects"] == parallel[split]["objects"]
        assert serial[split]["image_id"] == parallel[split]["image_id"]


def test_splits_are_independent_of_each_others_size(tmp_path):
    small = make_synthetic_dataset(num_train=2, num_val=3, seed=0, cache_dir=str(tmp_path / "a"))
    large = make_synthetic_dataset(num_train=5, num_val=3, num_test=2, seed=0, cache_dir=str(tmp_path / "b"))
    assert png_bytes(small["validation"]) == png_bytes(large["validation"])
    assert png_bytes(small["train"]) == png_bytes(large["train"])[:2]
    assert set(large) == {"train", "validation", "test"} and set(small) == {"train", "validation"}
    assert not set(png_bytes(large["test"])) & set(png_bytes(large["validation"]))


def test_empty_split_has_the_schema(tmp_path):
    dataset = make_synthetic_dataset(num_train=2, num_val=0, cache_dir=str(tmp_path))
    assert len(dataset["validation"]) == 0
    assert dataset["validation"].features == detection_features(["circle", "square", "triangle"])


def test_rows_follow_the_schema_and_boxes_are_valid(shapes):
    train = shapes["train"]
    assert train.features == detection_features(["circle", "square", "triangle"])
    assert train["image_id"] == list(range(1, len(train) + 1))
    all_ids = []
    for row in train:
        image = row["image"]
        assert image.size == (row["width"], row["height"]) == (128, 128)
        assert row["file_name"] == f"synthetic/train/{row['image_id']:06d}.png"
        objects = row["objects"]
        num = len(objects["bbox"])
        assert 1 <= num <= 6
        assert {len(values) for values in objects.values()} == {num}
        boxes = np.asarray(objects["bbox"])
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] >= 1)
        assert np.all(boxes[:, 0] + boxes[:, 2] <= 128) and np.all(boxes[:, 1] + boxes[:, 3] <= 128)
        areas = np.asarray(objects["area"])
        assert np.all(areas > 0) and np.all(areas <= boxes[:, 2] * boxes[:, 3])
        assert set(objects["category"]) <= {0, 1, 2}
        assert set(objects["iscrowd"]) == {0} and set(objects["difficult"]) == {0}
        assert set(objects["truncated"]) <= {0, 1}
        all_ids += objects["id"]
    assert len(set(all_ids)) == len(all_ids)


def test_dataset_is_not_trivial(shapes):
    """Crowded images, mostly COCO-small objects of every class, some touching the border, some occluded."""
    objects = shapes["train"]["objects"]
    counts = np.array([len(o["bbox"]) for o in objects])
    assert (counts >= 4).mean() > 0.3
    assert counts.min() == 1 and counts.max() == 6
    areas = np.concatenate([o["area"] for o in objects])
    assert (areas < 32**2).mean() > 0.6  # COCO "small"
    assert (areas >= 32**2).any()
    categories = np.concatenate([o["category"] for o in objects])
    assert np.bincount(categories, minlength=3).min() > 0.2 * len(categories)
    assert np.concatenate([o["truncated"] for o in objects]).mean() > 0.05
    samples = [generate_image(image_rng(3, "train", i), SyntheticShapesConfig()) for i in range(60)]
    visibility = np.concatenate([s.visibility for s in samples])
    assert (visibility < 0.95).mean() > 0.1


def test_backgrounds_are_textured(shapes):
    """Pixels outside every box vary a lot (not a flat background a threshold could separate)."""
    spreads = []
    for row in shapes["train"].select(range(24)):
        image = np.asarray(row["image"], dtype=np.float32)
        outside = np.ones(image.shape[:2], dtype=bool)
        for x, y, w, h in np.asarray(row["objects"]["bbox"], dtype=int):
            outside[y : y + h, x : x + w] = False
        spreads.append(image[outside].std(axis=0).mean())
    assert np.median(spreads) > 15


def test_class_is_not_given_away_by_colour():
    config = SyntheticShapesConfig()
    colours, categories = [], []
    for index in range(250):
        sample = generate_image(image_rng(11, "train", index), config)
        for (x, y, w, h), category in zip(sample.boxes.astype(int), sample.categories):
            colours.append(sample.image[y : y + h, x : x + w].reshape(-1, 3).mean(axis=0))
            categories.append(category)
    colours, categories = np.asarray(colours), np.asarray(categories)
    means = np.stack([colours[categories == c].mean(axis=0) for c in range(3)])
    spread = colours.std(axis=0)
    # Per-class mean colours differ by a small fraction of the colour spread within the data.
    assert np.all(np.ptp(means, axis=0) < 0.25 * spread)


def test_labels_are_the_visible_pixels_of_every_drawn_shape():
    """Boxes and areas derive from each shape's visible pixels; no pixel belongs to an unlabelled shape."""
    config = SyntheticShapesConfig(min_objects=5, max_objects=6, min_size=30, max_size=44, min_visibility=0.6)
    for index in range(30):
        sample = generate_image(image_rng(0, "train", index), config)
        num = len(sample.categories)
        assert set(np.unique(sample.instance_map).tolist()) == {-1, *range(num)}
        assert np.all(sample.visibility >= 0.6)
        for k in range(num):
            ys, xs = np.nonzero(sample.instance_map == k)
            expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            np.testing.assert_array_equal(sample.boxes[k], expected)
            assert sample.areas[k] == len(xs)
            if sample.truncated[k]:  # cut by the image border, so its pixels reach the border
                assert xs.min() == 0 or ys.min() == 0 or xs.max() == config.width - 1 or ys.max() == config.height - 1


def test_shapes_stand_out_from_their_surroundings():
    """A shape's mean colour differs from the pixels just around it (the contrast rule), for nearly all shapes."""
    config = SyntheticShapesConfig()
    distances = []
    for index in range(40):
        sample = generate_image(image_rng(5, "validation", index), config)
        image = sample.image.astype(np.float32)
        for k in range(len(sample.categories)):
            shape = (sample.instance_map == k).astype(np.uint8)
            around = (cv2.dilate(shape, np.ones((5, 5), np.uint8)) > 0) & (sample.instance_map == -1)
            if around.sum() >= 10:
                distances.append(np.linalg.norm(image[shape > 0].mean(axis=0) - image[around].mean(axis=0)))
    assert np.mean(np.asarray(distances) > 25) > 0.9


def test_other_shapes_grayscale_and_rectangular_images(tmp_path):
    classes = ("star", "hexagon", "cross", "pentagon")
    dataset = make_synthetic_dataset(
        num_train=8, num_val=0, image_size=(96, 160), classes=classes, grayscale=True, cache_dir=str(tmp_path)
    )["train"]
    assert dataset.features["objects"]["category"].feature.names == list(classes)
    raw = PIL.Image.open(io.BytesIO(png_bytes(dataset)[0]))
    assert raw.mode == "L" and raw.size == (160, 96)
    assert dataset[0]["width"] == 160 and dataset[0]["height"] == 96
    for row in dataset:
        boxes = np.asarray(row["objects"]["bbox"])
        assert np.all(boxes[:, 0] + boxes[:, 2] <= 160) and np.all(boxes[:, 1] + boxes[:, 3] <= 96)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"classes": ("circle", "hexagram")},
        {"classes": ("circle", "circle")},
        {"min_objects": 4, "max_objects": 2},
        {"min_size": 50, "max_size": 40},
        {"max_size": 200},
        {"size_sampling": "normal"},
        {"min_visibility": 0.0},
    ],
)
def test_bad_configuration_is_rejected(kwargs):
    with pytest.raises(ValueError):
        SyntheticShapesConfig(**kwargs)


def test_impossible_crowding_raises_a_clear_error():
    config = SyntheticShapesConfig(height=48, width=48, min_objects=12, max_objects=12, min_size=40, max_size=44)
    with pytest.raises(RuntimeError, match="Could only place"):
        generate_image(image_rng(0, "train", 0), config)


def test_available_shapes_all_render():
    for name in AVAILABLE_SHAPES:
        config = SyntheticShapesConfig(classes=(name,), min_objects=2, max_objects=2)
        sample = generate_image(image_rng(0, "train", 1), config)
        assert len(sample.categories) == 2 and set(sample.categories.tolist()) == {0}


# ------------------------------------------------------------------------------------------------ visualization
def test_draw_detections_draws_coloured_boxes_and_validates_lengths():
    image = np.zeros((64, 80, 3), dtype=np.uint8)
    drawn = draw_detections(image, [[10, 12, 40, 50]], [2], scores=[0.9], id2label={2: "triangle"}, line_width=1)
    array = np.asarray(drawn)
    assert drawn.size == (80, 64) and drawn.mode == "RGB"
    assert tuple(array[30, 10]) == label_color(2)  # left edge, below the caption
    assert tuple(array[50, 25]) == label_color(2)  # bottom edge
    assert not array[30, 25].any()  # inside the box stays untouched
    assert not np.asarray(image).any()  # the input is not modified
    with pytest.raises(ValueError, match="2 boxes, 1 labels"):
        draw_detections(image, [[0, 0, 5, 5], [1, 1, 6, 6]], [0])


def test_draw_detections_accepts_chw_tensors_and_grids_tile():
    torch = pytest.importorskip("torch")
    tensor = torch.rand(3, 20, 30)
    drawn = draw_detections(tensor, torch.tensor([[1.0, 1.0, 10.0, 10.0]]), torch.tensor([0]))
    assert drawn.size == (30, 20)
    grid = image_grid([drawn] * 5, columns=2, padding=1)
    assert grid.size == (2 * 30 + 3, 3 * 20 + 4)


def test_draw_detections_shows_16_bit_images_by_the_decoding_policy():
    """A 16-bit PIL image is drawn from its top 8 bits (detr_hf.imaging), not saturated to white."""
    ramp = np.linspace(0, 65535, 40 * 60).reshape(40, 60).astype(np.uint16)
    drawn = np.asarray(draw_detections(PIL.Image.fromarray(ramp), np.zeros((0, 4)), []))
    np.testing.assert_array_equal(drawn, np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2))
