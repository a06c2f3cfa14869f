"""Augmentation presets, the dataset transform and the collate function.

Geometry is checked against first principles: a solid rectangle's pixels after augmentation, and the rectangle's
corners carried through the same steps as keypoints.
"""

from __future__ import annotations

import io
import pickle

import albumentations as A
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import DetrImageProcessorPil

from detr_hf.box_ops import xywh_to_xyxy, xyxy_to_cxcywh
from detr_hf.data.augmentations import ResizeShortestEdge
from detr_hf.data.synthetic import make_synthetic_dataset
from detr_hf.data.transforms import (
    BBOX_LABEL_FIELDS,
    PRESETS,
    bbox_params,
    build_transforms,
    detr_scales,
    make_collate_fn,
    make_transform_fn,
)

SCALES, MAX_SIZE = [64, 80, 96], 160


def rows(images: list, boxes: list[list[list[float]]], categories: list[list[int]], **extra) -> dict[str, list]:
    """A batch (dict of columns) of the package schema, as ``with_transform`` hands it over."""
    objects = [
        {
            "bbox": b,
            "category": c,
            "area": [w * h for _, _, w, h in b],
            "iscrowd": [0] * len(b),
            "id": list(range(len(b))),
        }
        for b, c in zip(boxes, categories)
    ]
    return {"image": images, "image_id": list(range(1, len(images) + 1)), "objects": objects, **extra}


def rectangle_image(height: int, width: int, box: list[int], channels: int = 3) -> PIL.Image.Image:
    x, y, w, h = box
    array = np.zeros((height, width), dtype=np.uint8)
    array[y : y + h, x : x + w] = 255
    return PIL.Image.fromarray(array if channels == 1 else np.repeat(array[..., None], 3, axis=2))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_dataset(num_train=12, num_val=4, seed=0, cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_detr_scales_reproduce_detr_coco_recipe():
    scales, max_size = detr_scales(800)
    assert scales == [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800] and max_size == 1333
    small, small_max = detr_scales(128)
    assert min(small) == 77 and max(small) == 128 and small_max == 213 and small == sorted(set(small))


def test_resize_shortest_edge_respects_max_size_and_upscale_only():
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    assert ResizeShortestEdge([200], max_size=450)(image=image)["image"].shape == (150, 450, 3)  # capped
    assert ResizeShortestEdge([50])(image=image)["image"].shape == (50, 150, 3)
    assert ResizeShortestEdge([50], upscale_only=True)(image=image)["image"].shape == (100, 300, 3)
    gray = np.zeros((100, 300, 1), dtype=np.uint8)
    assert ResizeShortestEdge([60])(image=gray)["image"].shape == (60, 180, 1)


@pytest.mark.parametrize("preset", PRESETS)
def test_boxes_tightly_cover_the_augmented_rectangle(preset):
    """The returned box matches the bright pixels of a solid rectangle after augmentation, within about a pixel."""
    rng = np.random.default_rng(0)
    transform = make_transform_fn(build_transforms(preset, SCALES, MAX_SIZE, seed=1))
    kept = 0
    for _ in range(30):
        height, width = (int(v) for v in rng.integers(50, 130, size=2))
        w, h = int(rng.integers(6, width // 2)), int(rng.integers(6, height // 2))
        box = [int(rng.integers(0, width - w)), int(rng.integers(0, height - h)), w, h]
        category = int(rng.integers(0, 5))
        out = transform(rows([rectangle_image(height, width, box)], [[box]], [[category]]))
        image, annotations = out["image"][0], out["annotations"][0]["annotations"]
        assert out["orig_size"][0] == (height, width)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        bright = image.mean(axis=2) > 127
        if not annotations:
            assert preset != "eval"
            continue
        kept += 1
        (annotation,) = annotations
        assert annotation["category_id"] == category and annotation["iscrowd"] == 0 and annotation["id"] == 0
        ys, xs = np.nonzero(bright)
        pixel_box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        x, y, bw, bh = annotation["bbox"]
        np.testing.assert_allclose([x, y, x + bw, y + bh], pixel_box, atol=1.5)
        # Area scales with the box (the rectangle's mask area is its box area here).
        assert annotation["area"] == pytest.approx(bw * bh, rel=1e-4)
    assert kept >= 20


@pytest.mark.parametrize("preset", ["train", "aerial", "medical"])
def test_boxes_are_dropped_only_when_cropped_away(preset):
    """Each preset's steps, with rectangle corners riding along as keypoints: every input box comes back as the
    clipped box of its moved corners, and is missing only when too little of it stayed in the image."""
    min_visibility = 0.3
    steps = build_transforms(preset, SCALES, MAX_SIZE, min_visibility=min_visibility).transforms
    pipeline = A.Compose(
        steps,
        bbox_params=bbox_params(min_visibility),
        keypoint_params=A.KeypointParams(format="xy", label_fields=["corner_of"], remove_invisible=False),
        seed=2,
    )
    rng = np.random.default_rng(1)
    dropped = kept = 0
    for _ in range(40):
        image = rng.integers(0, 255, size=(int(rng.integers(60, 120)), int(rng.integers(60, 120)), 3), dtype=np.uint8)
        height, width = image.shape[:2]
        num = int(rng.integers(1, 5))
        wh = rng.uniform(4, 30, size=(num, 2))
        xy = rng.uniform(0, 1, size=(num, 2)) * ([width, height] - wh)
        room = np.array([width, height]) - wh
        xy = np.where(rng.random((num, 2)) < 0.3, np.round(xy / room) * room, xy)  # some boxes on the border
        boxes = np.concatenate([xy, wh], axis=1)
        corners = xywh_to_xyxy(torch.from_numpy(boxes)).numpy()
        # Keypoints live on pixel centres (pixel i spans [i, i + 1)), so continuous corners go in shifted by half a pixel.
        keypoints = (
            np.concatenate([corners[:, [0, 1]], corners[:, [2, 1]], corners[:, [0, 3]], corners[:, [2, 3]]]) - 0.5
        )
        out = pipeline(
            image=image,
            bboxes=boxes,
            category_ids=np.arange(num) + 10,
            box_indices=np.arange(num),
            keypoints=keypoints,
            corner_of=np.tile(np.arange(num), 4),
        )
        out_h, out_w = out["image"].shape[:2]
        moved = np.asarray(out["keypoints"])[:, :2] + 0.5
        corner_of = np.asarray(out["corner_of"])
        returned = dict(zip(np.asarray(out["box_indices"]).tolist(), np.asarray(out["bboxes"]).reshape(-1, 4)))
        for k in range(num):
            points = moved[corner_of == k]
            full = np.concatenate([points.min(axis=0), points.max(axis=0)])
            clipped = np.clip(full, 0, [out_w, out_h, out_w, out_h])
            share = np.prod(np.clip(clipped[2:] - clipped[:2], 0, None)) / np.prod(full[2:] - full[:2])
            if k in returned:
                kept += 1
                x, y, w, h = returned[k]
                np.testing.assert_allclose([x, y, x + w, y + h], clipped, atol=1e-3)
                assert share >= (min_visibility**2 if preset == "medical" else min_visibility) - 0.05
            else:
                dropped += 1
                assert share < min_visibility + 0.05, f"box {k} dropped with {share:.2f} of it in the image"
        labels = np.asarray(out["category_ids"])
        np.testing.assert_array_equal(labels, np.asarray(out["box_indices"]) + 10)
    assert kept > 40 and dropped > 0


def test_every_preset_runs_on_the_synthetic_data(shapes):
    train = shapes["train"]
    for preset in PRESETS:
        view = train.with_transform(make_transform_fn(build_transforms(preset, *detr_scales(128), seed=0)))
        for index in range(len(train)):
            example = view[index]
            image, annotations = example["image"], example["annotations"]
            height, width = image.shape[:2]
            assert image.dtype == np.uint8 and image.shape[2] == 3
            assert annotations["image_id"] == example["image_id"] == train[index]["image_id"]
            objects = annotations["annotations"]
            num_source = len(train[index]["objects"]["bbox"])
            assert len(objects) == num_source if preset == "eval" else len(objects) <= num_source
            for obj in objects:
                x, y, w, h = obj["bbox"]
                assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width + 1e-4 and y + h <= height + 1e-4
                assert obj["category_id"] in (0, 1, 2) and obj["area"] > 0


def test_eval_is_deterministic_and_keeps_every_box(shapes):
    validation = shapes["validation"]
    transform = make_transform_fn(build_transforms("eval", [96], 160))
    first = validation.with_transform(transform)[:]
    second = validation.with_transform(transform)[:]
    for a, b in zip(first["image"], second["image"]):
        np.testing.assert_array_equal(a, b)
        assert a.shape == (96, 96, 3)
    for target, source in zip(first["annotations"], validation):
        objects = target["annotations"]
        boxes = np.asarray([obj["bbox"] for obj in objects])
        expected = np.asarray(source["objects"]["bbox"]) * 96 / 128
        np.testing.assert_allclose(boxes, expected, atol=1e-3)
        np.testing.assert_array_equal([obj["category_id"] for obj in objects], source["objects"]["category"])
        np.testing.assert_allclose(
            [obj["area"] for obj in objects],
            np.asarray(source["objects"]["area"]) * (96 / 128) ** 2,
            rtol=1e-4,
        )
    assert first["annotations"] == second["annotations"]


def test_eval_keeps_tiny_boxes_and_clips_boxes_that_stick_out():
    transform = make_transform_fn(build_transforms("eval", [50], None))
    image = PIL.Image.new("RGB", (200, 100))
    out = transform(rows([image], [[[10.0, 10.0, 1.0, 1.0], [190.0, 90.0, 20.0, 20.0]]], [[1, 2]]))
    boxes = [obj["bbox"] for obj in out["annotations"][0]["annotations"]]
    np.testing.assert_allclose(boxes, [[5.0, 5.0, 0.5, 0.5], [95.0, 45.0, 5.0, 5.0]], atol=1e-4)


def test_aerial_never_shrinks_objects():
    transform = make_transform_fn(build_transforms("aerial", [64], None, seed=0))
    box = [30, 40, 12, 12]
    for _ in range(20):
        out = transform(rows([rectangle_image(128, 128, box)], [[box]], [[0]]))
        for obj in out["annotations"][0]["annotations"]:
            x, y, w, h = obj["bbox"]
            width, height = out["image"][0].shape[1], out["image"][0].shape[0]
            if x > 0 and y > 0 and x + w < width and y + h < height:  # not cut by a crop: full size or larger
                assert min(w, h) >= 12 - 1e-4


def test_medical_preset_handles_single_channel_images():
    transform = make_transform_fn(build_transforms("medical", [64, 72], 120, seed=0))
    box = [20, 16, 30, 24]
    batch = rows([rectangle_image(80, 100, box, channels=1)] * 6, [[box]] * 6, [[3]] * 6)
    out = transform(batch)
    for image, target in zip(out["image"], out["annotations"]):
        assert image.ndim == 3 and image.shape[2] == 1 and min(image.shape[:2]) in (64, 72)
        assert all(obj["category_id"] == 3 for obj in target["annotations"])
    for processor in (DetrImageProcessorPil(), _our_processor()):
        batch = make_collate_fn(processor)([{key: out[key][i] for key in out} for i in range(len(out["image"]))])
        assert batch["pixel_values"].shape[1] == 3
        np.testing.assert_allclose(batch["pixel_values"][:, 0], batch["pixel_values"][:, 1] - 0.0, atol=0.5)


def test_grayscale_synthetic_dataset_feeds_the_medical_preset(tmp_path):
    dataset = make_synthetic_dataset(num_train=4, num_val=0, grayscale=True, cache_dir=str(tmp_path))["train"]
    view = dataset.with_transform(make_transform_fn(build_transforms("medical", [96], 160, seed=0)))
    example = view[0]
    assert example["image"].shape[2] == 3  # the schema decodes to RGB; the three channels are equal
    np.testing.assert_array_equal(example["image"][..., 0], example["image"][..., 2])


@pytest.mark.parametrize(
    ("box", "message"),
    [([5.0, 5.0, 0.0, 4.0], "empty or not finite"), ([5.0, 5.0, float("nan"), 4.0], "empty or not finite"),
     ([70.0, 5.0, 5.0, 4.0], "entirely outside")],
)  # fmt: skip
def test_invalid_boxes_raise_naming_the_image(box, message):
    transform = make_transform_fn(build_transforms("train", [32], None))
    batch = rows([PIL.Image.new("RGB", (64, 48))], [[[1.0, 1.0, 3.0, 3.0], box]], [[0, 1]], file_name=["a/b.png"])
    with pytest.raises(ValueError, match=rf"image_id 1 \(a/b.png\): object 1 .*{message}"):
        transform(batch)


def test_size_mismatch_and_bad_pipelines_raise():
    transform = make_transform_fn(None)
    with pytest.raises(ValueError, match="width=50"):
        transform(rows([PIL.Image.new("RGB", (64, 48))], [[]], [[]], width=[50], height=[48]))
    with pytest.raises(ValueError, match="categories"):
        transform(rows([PIL.Image.new("RGB", (64, 48))], [[[1.0, 1.0, 3.0, 3.0]]], [[]]))
    with pytest.raises(ValueError, match="bbox_params"):
        make_transform_fn(A.Compose([A.HorizontalFlip()]))
    with pytest.raises(ValueError, match="label_fields"):
        make_transform_fn(A.Compose([A.HorizontalFlip()], bbox_params=A.BboxParams(format="coco", label_fields=["x"])))
    with pytest.raises(ValueError, match="Unknown transforms preset"):
        build_transforms("satellite")
    assert tuple(bbox_params().label_fields) == BBOX_LABEL_FIELDS


def _our_processor():
    module = pytest.importorskip("detr_hf.image_processing_detr")
    return module.DetrImageProcessor()


def _expected_boxes(annotations: list[dict], height: int, width: int) -> torch.Tensor:
    boxes = torch.tensor([obj["bbox"] for obj in annotations], dtype=torch.float32).reshape(-1, 4)
    return xyxy_to_cxcywh(xywh_to_xyxy(boxes)) / torch.tensor([width, height, width, height])


@pytest.mark.parametrize("processor_kind", ["transformers", "detr_hf"])
def test_collate_matches_the_annotations(shapes, processor_kind):
    processor = DetrImageProcessorPil() if processor_kind == "transformers" else _our_processor()
    view = shapes["train"].with_transform(make_transform_fn(build_transforms("eval", [96], 160)))
    examples = [view[i] for i in range(4)]
    batch = make_collate_fn(processor)(examples)
    assert batch["pixel_values"].shape == (4, 3, 96, 96) and batch["pixel_mask"].shape == (4, 96, 96)
    assert bool(batch["pixel_mask"].all())
    for label, example in zip(batch["labels"], examples):
        objects = example["annotations"]["annotations"]
        assert label["class_labels"].tolist() == [obj["category_id"] for obj in objects]
        torch.testing.assert_close(label["boxes"], _expected_boxes(objects, 96, 96), atol=1e-5, rtol=0)
        assert label["orig_size"].tolist() == [128, 128]
        assert int(label["image_id"]) == example["image_id"]


def test_collate_pads_mixed_sizes_with_our_processor(shapes):
    processor = _our_processor()
    view = shapes["train"].with_transform(make_transform_fn(build_transforms("train", SCALES, MAX_SIZE, seed=3)))
    examples = [view[i] for i in range(6)]
    sizes = [example["image"].shape[:2] for example in examples]
    batch = make_collate_fn(processor)(examples)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    assert batch["pixel_values"].shape == (6, 3, height, width)
    for mask, label, example, (h, w) in zip(batch["pixel_mask"], batch["labels"], examples, sizes):
        assert int(mask.sum()) == h * w and bool(mask[:h, :w].all())
        objects = example["annotations"]["annotations"]
        torch.testing.assert_close(label["boxes"], _expected_boxes(objects, h, w), atol=1e-5, rtol=0)
        assert label["size"].tolist() == [h, w] and label["orig_size"].tolist() == [128, 128]


def test_dataloader_workers_do_not_repeat_each_others_augmentations():
    image = np.random.default_rng(0).integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    batch = rows([PIL.Image.fromarray(image)], [[[10.0, 10.0, 20.0, 20.0]]], [[0]])
    transform = make_transform_fn(build_transforms("train", [40, 48, 56, 64], None, seed=0))

    class Same(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return transform(batch)["image"][0]

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(Same(), batch_size=None, num_workers=2, multiprocessing_context="fork")
    first, second = list(loader)[:2]  # the first item of each worker
    assert first.shape != second.shape or not np.array_equal(first, second)


def test_transform_and_collate_pickle_for_spawned_workers(shapes):
    transform = make_transform_fn(build_transforms("eval", [64], None))
    clone = pickle.loads(pickle.dumps(transform))
    batch = shapes["validation"][:2]
    assert clone(batch)["annotations"] == transform(batch)["annotations"]
    collate = pickle.loads(pickle.dumps(make_collate_fn(_our_processor())))
    examples = [{key: values[i] for key, values in transform(batch).items()} for i in range(2)]
    assert collate(examples)["pixel_values"].shape == (2, 3, 64, 64)


@pytest.mark.parametrize("preset", PRESETS)
def test_images_without_objects_pass_through(preset):
    transform = make_transform_fn(build_transforms(preset, [48], None, seed=0))
    out = transform(rows([PIL.Image.new("RGB", (80, 60))], [[]], [[]]))
    assert out["annotations"][0]["annotations"] == [] and min(out["image"][0].shape[:2]) <= 60
    batch = make_collate_fn(_our_processor())([{key: values[0] for key, values in out.items()}])
    assert batch["labels"][0]["boxes"].shape == (0, 4)


def test_exif_orientation_is_applied_to_undecoded_images():
    """Boxes are in the upright image's pixels, so raw bytes with an EXIF rotation are turned upright first."""
    upright = np.zeros((40, 60, 3), dtype=np.uint8)
    upright[5:15, 30:50] = 255
    stored = PIL.Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))  # as a camera would store it
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    image = {"bytes": buffer.getvalue(), "path": None}
    out = make_transform_fn(None)(rows([image], [[[30.0, 5.0, 20.0, 10.0]]], [[0]], width=[60], height=[40]))
    assert out["image"][0].shape == (40, 60, 3)
    assert out["image"][0][5:15, 30:50].mean() > 200 and out["image"][0][20:, :].mean() < 30


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_depth_images_get_the_pixels_conversion_stores(mode):
    """One 16-bit policy (detr_hf.imaging): augmentation sees the top 8 bits, as conversion stores them and predict
    decodes them, rather than refusing the image (or saturating it, as a plain convert("RGB") would)."""
    from detr_hf.imaging import decode_image

    ramp = np.linspace(0, 65535, 30 * 40).reshape(30, 40)
    if mode == "F":
        image = PIL.Image.fromarray((ramp / 65535).astype(np.float32), mode="F")
        expected = ((ramp / 65535).astype(np.float32) * 255).astype(np.uint8)
    else:
        image = PIL.Image.fromarray(ramp.astype(np.uint16)).convert(mode)
        expected = (ramp.astype(np.int64) >> 8).astype(np.uint8)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    value = {"bytes": buffer.getvalue(), "path": None}
    out = make_transform_fn(None)(rows([value], [[[1.0, 1.0, 10.0, 10.0]]], [[0]], width=[40], height=[30]))
    assert out["image"][0].shape == (30, 40, 1) and out["image"][0].dtype == np.uint8
    np.testing.assert_array_equal(out["image"][0][..., 0], expected)
    np.testing.assert_array_equal(np.asarray(decode_image(value))[..., 0], expected)
