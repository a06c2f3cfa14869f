"""DetrImageProcessor against transformers' DETR image processor (PIL backend) and against first principles."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch
import transformers
from transformers import DetrImageProcessorPil

from detr_hf.box_ops import cxcywh_to_xyxy
from detr_hf.image_processing_detr import DetrImageProcessor, get_resize_output_size

LABEL_KEYS = ("image_id", "class_labels", "boxes", "area", "iscrowd", "orig_size", "size")


def random_image(height: int, width: int, seed: int = 0, mode: str = "RGB") -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width) if channels is None else (height, width, channels)
    return PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def coco_target(image_id: int, boxes: list[list[float]], categories: list[int], iscrowd: list[int] | None = None):
    iscrowd = iscrowd or [0] * len(boxes)
    return {
        "image_id": image_id,
        "annotations": [
            {"bbox": box, "category_id": c, "area": float(box[2] * box[3]) + 0.5, "iscrowd": crowd}
            for box, c, crowd in zip(boxes, categories, iscrowd)
        ],
    }


@pytest.fixture(scope="module")
def reference() -> DetrImageProcessorPil:
    return DetrImageProcessorPil()


@pytest.fixture(scope="module")
def processor() -> DetrImageProcessor:
    return DetrImageProcessor()


# ---------------------------------------------------------------------------- pixel values


@pytest.mark.parametrize(
    "height,width,expected",
    [
        (30, 40, (800, 1066)),  # short side to 800; the long side 40 * 800 / 30 = 1066.7 is truncated
        (40, 30, (1066, 800)),
        (30, 100, (400, 1333)),  # 800 would make the long side 2667: capped at 1333, short side round(399.9)
        (2000, 1500, (1066, 800)),  # shrinking follows the same rule
        (800, 1333, (800, 1333)),  # already the size: untouched
    ],
)
def test_default_size_is_short_side_800_long_side_at_most_1333(processor, height, width, expected):
    """The default resize from first principles (DETR's rule), independent of transformers' implementation."""
    out = processor(random_image(height, width))
    assert tuple(out["pixel_values"].shape) == (1, 3, *expected)
    assert tuple(out["pixel_mask"].shape) == (1, *expected) and bool(out["pixel_mask"].all())
    assert get_resize_output_size(height, width, processor.size) == expected


@pytest.mark.parametrize(
    "height,width",
    [(480, 640), (640, 480), (20, 13), (1500, 2100), (333, 1000), (3000, 400), (800, 1333)],
    ids=["landscape", "portrait", "tiny", "larger-than-1333", "wide", "very-tall", "exact"],
)
def test_pixel_values_match_transformers(reference, processor, height, width):
    image = random_image(height, width, seed=height)
    expected = reference(image, return_tensors="pt")
    ours = processor(image)
    assert ours["pixel_values"].dtype == torch.float32 and ours["pixel_mask"].dtype == torch.int64
    assert ours["pixel_values"].shape == expected["pixel_values"].shape
    torch.testing.assert_close(ours["pixel_values"], expected["pixel_values"], atol=1e-4, rtol=0)
    assert torch.equal(ours["pixel_mask"], expected["pixel_mask"])
    assert tuple(ours["pixel_values"].shape[-2:]) == get_resize_output_size(height, width, processor.size)


def test_batch_pixel_values_and_masks_match_transformers(reference, processor):
    images = [random_image(480, 640, 1), random_image(640, 480, 2), random_image(50, 50, 3)]
    expected = reference(images, return_tensors="pt")
    ours = processor(images)
    torch.testing.assert_close(ours["pixel_values"], expected["pixel_values"], atol=1e-4, rtol=0)
    assert torch.equal(ours["pixel_mask"], expected["pixel_mask"])
    assert ours["pixel_mask"][1].sum() == 1066 * 800  # the portrait image fills only its own area
    assert (ours["pixel_values"][1, :, :, 800:] == 0).all()


def test_array_and_tensor_layouts_give_the_same_pixels(processor):
    image = random_image(37, 53, 4)
    expected = processor(image)["pixel_values"]
    hwc = np.array(image)
    for variant in (hwc, hwc.transpose(2, 0, 1), torch.from_numpy(hwc).permute(2, 0, 1), torch.from_numpy(hwc.copy())):
        assert torch.equal(processor(variant)["pixel_values"], expected)
    batched = processor(np.stack([hwc, hwc]))["pixel_values"]
    assert torch.equal(batched, torch.cat([expected, expected]))


def test_size_variants_and_per_call_overrides(processor):
    image = random_image(100, 200, 5)
    assert processor(image, size={"height": 64, "width": 32})["pixel_values"].shape == (1, 3, 64, 32)
    assert processor(image, size={"max_height": 50, "max_width": 50})["pixel_values"].shape == (1, 3, 25, 50)
    assert processor(image, do_resize=False)["pixel_values"].shape == (1, 3, 100, 200)
    padded = processor(image, size={"max_height": 50, "max_width": 50}, pad_size={"height": 60, "width": 70})
    assert padded["pixel_values"].shape == (1, 3, 60, 70) and padded["pixel_mask"].sum() == 25 * 50
    unpadded = processor(
        [image, random_image(10, 10)], do_pad=False, size={"height": 8, "width": 8}, return_tensors="np"
    )
    assert isinstance(unpadded["pixel_values"], np.ndarray) and unpadded["pixel_values"].shape == (2, 3, 8, 8)
    ragged = processor([image, random_image(10, 10)], do_pad=False)
    assert [tuple(v.shape) for v in ragged["pixel_values"]] == [(3, 666, 1333), (3, 800, 800)]
    assert processor.size == {"shortest_edge": 800, "longest_edge": 1333}  # overrides do not stick
    with pytest.raises(TypeError, match="unexpected arguments"):
        processor(image, do_magic=True)
    with pytest.raises(ValueError, match="larger than pad_size"):
        processor(image, pad_size={"height": 10, "width": 10})


def test_pad_collates_per_image_outputs_like_a_batch_call(processor):
    images = [random_image(60, 90, 6), random_image(90, 60, 7)]
    targets = [coco_target(1, [[5, 5, 20, 20]], [1]), coco_target(2, [[1, 2, 30, 40]], [0])]
    single = [processor(image, annotations=target) for image, target in zip(images, targets)]
    collated = processor.pad([s["pixel_values"][0] for s in single], labels=[s["labels"][0] for s in single])
    batch = processor(images, annotations=targets)
    assert torch.equal(collated["pixel_values"], batch["pixel_values"])
    assert torch.equal(collated["pixel_mask"], batch["pixel_mask"])
    for ours, theirs in zip(collated["labels"], batch["labels"]):
        assert all(torch.equal(ours[k], theirs[k]) for k in LABEL_KEYS)


# ---------------------------------------------------------------------------- labels


def annotated_scene(seed: int, height: int, width: int):
    """An image with boxes that exercise clipping, crowd and degenerate-box dropping."""
    target = coco_target(
        seed,
        boxes=[[10, 20, 100, 50], [width - 40, height - 100, 100, 200], [-10, -5, 30, 30], [50, 50, 0, 10],
               [width + 5, 10, 10, 10], [5, 5, 10, 10], [12.5, 7.25, 33.3, 21.7]],
        categories=[3, 1, 2, 4, 5, 6, 0],
        iscrowd=[0, 0, 0, 0, 0, 1, 0],
    )  # fmt: skip
    return random_image(height, width, seed), target


def test_single_image_labels_match_transformers(reference, processor):
    image, target = annotated_scene(1, 480, 640)
    expected = reference(image, annotations=target, return_tensors="pt")["labels"][0]
    ours = processor(image, annotations=target)["labels"][0]
    assert ours["class_labels"].tolist() == [3, 1, 2, 0]  # crowd, zero-width and outside boxes dropped
    assert torch.equal(ours["class_labels"], expected["class_labels"])
    torch.testing.assert_close(ours["boxes"], expected["boxes"], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours["area"], expected["area"], atol=0, rtol=1e-6)
    for key in ("image_id", "iscrowd", "orig_size", "size"):
        assert torch.equal(ours[key], expected[key]), key
    assert ours["boxes"].dtype == torch.float32 and ours["class_labels"].dtype == torch.int64


def test_absolute_boxes_without_conversion_match_transformers(reference, processor):
    image, target = annotated_scene(2, 300, 500)
    expected = reference(image, annotations=target, do_convert_annotations=False, return_tensors="pt")["labels"][0]
    ours = processor(image, annotations=target, do_convert_annotations=False)["labels"][0]
    torch.testing.assert_close(ours["boxes"], expected["boxes"], atol=1e-3, rtol=1e-6)


def test_padded_batch_labels_equal_single_image_labels(reference, processor):
    (image_a, target_a), (image_b, target_b) = annotated_scene(3, 480, 640), annotated_scene(4, 640, 300)
    ours = processor([image_a, image_b], annotations=[target_a, target_b])["labels"]
    for labels, image, target in zip(ours, (image_a, image_b), (target_a, target_b)):
        alone = processor(image, annotations=target)["labels"][0]
        for key in LABEL_KEYS:
            assert torch.equal(labels[key], alone[key]), key
    # transformers renormalizes boxes to the padded canvas in a batch, so its labels depend on the batch.
    theirs = reference([image_a, image_b], annotations=[target_a, target_b], return_tensors="pt")["labels"]
    theirs_alone = reference(image_b, annotations=target_b, return_tensors="pt")["labels"][0]
    assert not torch.allclose(theirs[1]["boxes"], theirs_alone["boxes"], atol=1e-3)


def test_empty_and_malformed_annotations(processor):
    image = random_image(20, 30)
    labels = processor(image, annotations={"image_id": 3, "annotations": []})["labels"][0]
    assert labels["boxes"].shape == (0, 4) and labels["class_labels"].shape == (0,)
    with pytest.raises(ValueError, match=r"annotations\[0\].*'image_id'"):
        processor(image, annotations={"annotations": []})
    with pytest.raises(ValueError, match=r"annotations\[1\]\['annotations'\]\[0\].*category_id"):
        processor(
            [image, image],
            annotations=[coco_target(1, [], []), {"image_id": 2, "annotations": [{"bbox": [1, 2, 3, 4]}]}],
        )
    with pytest.raises(ValueError, match="2 images but 1 annotations"):
        processor([image, image], annotations=[coco_target(1, [], [])])


# ---------------------------------------------------------------------------- post-processing


def test_softmax_post_process_matches_transformers(reference, processor):
    generator = torch.Generator().manual_seed(0)
    outputs = SimpleNamespace(
        logits=3 * torch.randn(3, 30, 7, generator=generator),
        pred_boxes=0.1 + 0.5 * torch.rand(3, 30, 4, generator=generator),
    )
    sizes = [(480, 640), (300, 200), (1000, 10)]
    for target_sizes in (sizes, torch.tensor(sizes), None):
        expected = reference.post_process_object_detection(outputs, threshold=0.3, target_sizes=target_sizes)
        ours = processor.post_process_object_detection(outputs, threshold=0.3, target_sizes=target_sizes)
        for mine, theirs in zip(ours, expected):
            order = theirs["scores"].argsort(descending=True)  # ours are sorted by score, transformers' by query
            assert len(mine["scores"]) == len(order) > 0
            torch.testing.assert_close(mine["scores"], theirs["scores"][order])
            assert torch.equal(mine["labels"], theirs["labels"][order])
            torch.testing.assert_close(mine["boxes"], theirs["boxes"][order])
    capped = processor.post_process_object_detection(outputs, threshold=0.0, top_k=5)
    best = outputs.logits.softmax(-1)[..., :-1].amax(-1).topk(5).values
    for result, expected_scores in zip(capped, best):
        torch.testing.assert_close(result["scores"], expected_scores)


def test_boxes_survive_labels_to_post_process_in_a_padded_batch(processor):
    """A perfect model predicting the labels must give back the drawn boxes in original pixels."""
    drawn = {0: [(30, 40, 130, 90), (200, 10, 250, 300)], 1: [(5, 6, 45, 70)]}
    images, targets = [], []
    for index, (width, height) in enumerate([(320, 480), (100, 80)]):
        image = PIL.Image.new("RGB", (width, height))
        draw = PIL.ImageDraw.Draw(image)
        for x0, y0, x1, y1 in drawn[index]:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline="white")
        images.append(image)
        targets.append(
            coco_target(
                index, [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in drawn[index]], [1, 2][: len(drawn[index])]
            )
        )
    batch = processor(images, annotations=targets)
    assert batch["pixel_values"].shape[-2:] == (1200, 1000) and batch["pixel_mask"][1].sum() < 1200 * 1000
    num_queries, num_classes = 4, 3
    logits = torch.full((2, num_queries, num_classes + 1), -10.0)
    logits[..., -1] = 10.0  # unused queries predict "no object"
    pred_boxes = torch.full((2, num_queries, 4), 0.5)
    for i, labels in enumerate(batch["labels"]):
        n = len(labels["boxes"])
        pred_boxes[i, :n] = labels["boxes"]
        logits[i, torch.arange(n), labels["class_labels"]] = 10.0
        logits[i, :n, -1] = -10.0
    sizes = torch.stack([labels["orig_size"] for labels in batch["labels"]])
    results = processor.post_process_object_detection(SimpleNamespace(logits=logits, pred_boxes=pred_boxes), 0.5, sizes)
    for index, result in enumerate(results):
        order = result["boxes"][:, 0].argsort()
        expected = torch.tensor(sorted(drawn[index]), dtype=torch.float32)
        torch.testing.assert_close(result["boxes"][order], expected, atol=1e-3, rtol=0)
    # Sanity check of the premise: the white outline really is where the label says.
    outline = np.asarray(images[1])[:, :, 0]
    assert outline[6, 5] == 255 and outline[69, 44] == 255 and outline[5, 5] == 0


def test_focal_post_process_takes_top_k_over_queries_and_classes():
    processor = DetrImageProcessor(use_focal_loss=True)
    logits = torch.full((1, 5, 4), -8.0)  # 5 queries, 4 classes, no "no object" logit
    picks = {(2, 1): 4.0, (2, 3): 3.0, (0, 0): 2.0, (4, 2): 1.0}  # query 2 is confident about two classes
    for (query, label), value in picks.items():
        logits[0, query, label] = value
    pred_boxes = torch.rand(1, 5, 4) * 0.4 + 0.1
    outputs = {"logits": logits, "pred_boxes": pred_boxes}
    result = processor.post_process_object_detection(outputs, threshold=0.1, target_sizes=[(100, 200)], top_k=3)[0]
    ranked = sorted(picks.items(), key=lambda item: -item[1])[:3]
    assert result["labels"].tolist() == [label for (_, label), _ in ranked]
    torch.testing.assert_close(result["scores"], torch.tensor([v for _, v in ranked]).sigmoid())
    expected_boxes = cxcywh_to_xyxy(pred_boxes[0, [q for (q, _), _ in ranked]]) * torch.tensor([200, 100, 200, 100])
    torch.testing.assert_close(result["boxes"], expected_boxes)
    everything = processor.post_process_object_detection(outputs, threshold=0.5, top_k=None)[0]
    assert len(everything["scores"]) == 4  # sigmoid(1) > 0.5 > sigmoid(-8)


# ---------------------------------------------------------------------------- image kinds


def test_grayscale_rgba_and_palette_inputs(processor):
    gray = random_image(40, 60, 8, mode="L")
    rgba = random_image(40, 60, 9, mode="RGBA")
    palette = random_image(40, 60, 10).convert("P")
    assert torch.equal(processor(gray)["pixel_values"], processor(gray.convert("RGB"))["pixel_values"])
    assert torch.equal(processor(rgba)["pixel_values"], processor(rgba.convert("RGB"))["pixel_values"])
    assert torch.equal(processor(palette)["pixel_values"], processor(palette.convert("RGB"))["pixel_values"])
    gray_array = np.asarray(gray)
    assert torch.equal(processor(gray_array)["pixel_values"], processor(gray)["pixel_values"])


def test_16_bit_images_use_their_bit_depth(processor):
    eight_bit = np.random.default_rng(11).integers(0, 256, (30, 50), dtype=np.uint8)
    sixteen_bit = eight_bit.astype(np.uint16) * 257  # the same brightness at 16 bits
    as_pil = PIL.Image.fromarray(sixteen_bit)
    assert as_pil.mode == "I;16"
    expected = processor(eight_bit, do_resize=False)["pixel_values"]
    for image in (sixteen_bit, as_pil, as_pil.convert("I"), torch.from_numpy(sixteen_bit.astype(np.int32))):
        torch.testing.assert_close(processor(image, do_resize=False)["pixel_values"], expected, atol=1e-5, rtol=0)
    resized = processor(as_pil)["pixel_values"]
    torch.testing.assert_close(resized, processor(eight_bit)["pixel_values"], atol=0.02, rtol=0)
    white = processor(np.full((8, 8), 65535, dtype=np.uint16), do_resize=False)["pixel_values"]
    torch.testing.assert_close(
        white[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    )


def test_one_channel_processor_converts_rgb_to_luminance():
    processor = DetrImageProcessor(image_mean=[0.5], image_std=[0.25], size={"height": 24, "width": 36})
    assert processor.num_channels == 1
    rgb = random_image(48, 72, 12)
    out = processor(rgb)["pixel_values"]
    assert out.shape == (1, 1, 24, 36)
    via_pil = processor(rgb.convert("L"))["pixel_values"]  # PIL rounds luminance to 8 bits, we do not
    torch.testing.assert_close(out, via_pil, atol=0.02, rtol=0)
    gray = np.array(rgb.convert("L"))
    unresized = processor(gray, do_resize=False)["pixel_values"][0, 0]
    torch.testing.assert_close(unresized, (torch.from_numpy(gray).float() / 255 - 0.5) / 0.25)


def test_four_channel_processor_treats_channels_independently():
    mean, std = [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]
    processor = DetrImageProcessor(image_mean=mean, image_std=std, size={"shortest_edge": 32, "longest_edge": 64})
    bands = np.random.default_rng(13).integers(0, 256, (4, 40, 50), dtype=np.uint8)  # CHW, as rasterio reads it
    out = processor(bands)["pixel_values"]
    assert out.shape == (1, 4, 32, 40)
    assert torch.equal(processor(bands.transpose(1, 2, 0))["pixel_values"], out)
    for c in range(4):
        single = DetrImageProcessor(image_mean=[mean[c]], image_std=[std[c]], size=processor.size)(bands[c])
        torch.testing.assert_close(out[:, c : c + 1], single["pixel_values"], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"images\[0\].*3 channels.*takes 4"):
        processor(random_image(20, 20))


def test_bad_inputs_get_clear_errors(processor):
    good = random_image(20, 20)
    with pytest.raises(ValueError, match=r"images\[1\].*shape \(5, 20, 30\)"):
        processor([good, np.zeros((5, 20, 30), dtype=np.uint8)])
    with pytest.raises(TypeError, match=r"images\[0\] is a str"):
        processor("not an image")
    with pytest.raises(ValueError, match=r"images\[0\].*int64"):
        processor(np.zeros((10, 10, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"images\[0\].*mode 'I'.*\[0, 65535\]"):
        processor(PIL.Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)))
    with pytest.raises(ValueError, match="image_mean has 3 values but image_std has 2"):
        DetrImageProcessor(image_std=[0.1, 0.2])


# ---------------------------------------------------------------------------- serialization


def test_save_and_load_round_trip(tmp_path):
    processor = DetrImageProcessor(
        size={"max_height": 64, "max_width": 96},
        image_mean=[0.2],
        image_std=[0.3],
        pad_size={"height": 70, "width": 100},
        use_focal_loss=True,
        resample="bicubic",
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert (
        saved["use_focal_loss"] is True
        and saved["resample"] == 3
        and saved["size"] == {"max_height": 64, "max_width": 96}
    )
    loaded = DetrImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = random_image(50, 40, 14, mode="L")
    assert torch.equal(loaded(image)["pixel_values"], processor(image)["pixel_values"])
    overridden = DetrImageProcessor.from_pretrained(tmp_path, use_focal_loss=False)
    assert overridden.use_focal_loss is False


def test_loads_config_saved_by_transformers(tmp_path, reference):
    transformers.DetrImageProcessor().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert {"image_processor_type", "format", "do_convert_annotations"} <= set(saved)
    loaded = DetrImageProcessor.from_pretrained(tmp_path)
    assert loaded.size == {"shortest_edge": 800, "longest_edge": 1333} and loaded.resample == 2
    assert loaded.image_mean == [0.485, 0.456, 0.406] and loaded.do_pad and not loaded.use_focal_loss
    image = random_image(123, 77, 15)
    torch.testing.assert_close(
        loaded(image)["pixel_values"], reference(image, return_tensors="pt")["pixel_values"], atol=1e-4, rtol=0
    )


def test_loads_legacy_feature_extractor_config(tmp_path):
    legacy = {"feature_extractor_type": "DetrFeatureExtractor", "size": 800, "max_size": 1333, "do_normalize": True}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    loaded = DetrImageProcessor.from_pretrained(tmp_path)
    assert loaded.size == {"shortest_edge": 800, "longest_edge": 1333}
