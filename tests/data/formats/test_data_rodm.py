"""One real label set (100 VOC2012 images, 273 boxes) exported in nine formats: every supported one must give the
same boxes. The reference is coco_format_v1, read here with the json module only. Skipped without the shared data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from detr_hf.data import DatasetValidationError, class_names_of, export_coco, load_detection_dataset
from detr_hf.data.formats import detect_format

DATABASE = SHARED_DATA / "data" / "database"
if not DATABASE.is_dir():
    pytest.skip(f"{DATABASE} is absent", allow_module_level=True)
GTS, IMAGES = DATABASE / "gts", DATABASE / "images"

# folder -> (detected format, options, boxes written as fractions of the image)
FORMATS = {
    "coco_format_v1": ("coco", {}, False),
    "coco_format_v2": ("coco", {}, False),
    "cvat_format": ("cvat", {}, False),
    # VOC-like XML written by CVAT/Datumaro, which write 0-based corners (see test_pascal_voc_is_one_based)
    "imagenet_format": ("voc", {"one_based": False}, False),
    "labelme_format": ("labelme", {}, False),
    "openimages_format": ("openimages", {}, True),  # fractions with decimal commas: "0,358"
    "pascalvoc_format": ("voc", {"one_based": False}, False),
    "yolo_format": ("yolo", {}, True),  # Darknet layout: obj.data, obj.names, train.txt with data/... paths
}


def reference() -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    """file name -> sorted [(class name, COCO box)] from coco_format_v1, without detr_hf."""
    coco = json.loads((GTS / "coco_format_v1" / "instances_default.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    out: dict[str, list] = {name: [] for name in files.values()}
    for a in coco["annotations"]:
        out[files[a["image_id"]]].append((names[a["category_id"]], tuple(float(v) for v in a["bbox"])))
    return {k: sorted(v) for k, v in out.items()}


def boxes_of(dataset) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    names = class_names_of(dataset)
    out = {}
    for r in dataset.select_columns(["file_name", "objects"]):
        objects = r["objects"]
        out[Path(r["file_name"]).name] = sorted(
            (names[c], tuple(b)) for c, b in zip(objects["category"], objects["bbox"])
        )
    return out


@pytest.fixture(scope="module")
def expected():
    ref = reference()
    assert sum(len(v) for v in ref.values()) == 273 and len(ref) == 100
    return ref


def load(folder: str, tmp_path, **kwargs):
    return load_detection_dataset(
        GTS / folder, images_dir=IMAGES, val_fraction=0, cache_dir=str(tmp_path), verbose=False, return_report=True,
        **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("folder", sorted(FORMATS))
def test_every_format_gives_the_same_273_boxes(folder, expected, tmp_path):
    fmt, options, normalized = FORMATS[folder]
    assert detect_format(GTS / folder) == fmt
    ds, report = load(folder, tmp_path, **options)
    got = boxes_of(ds["train"])
    assert got.keys() == expected.keys()
    for name, boxes in expected.items():
        assert [c for c, _ in got[name]] == [c for c, _ in boxes], name  # classes matched by name, whatever order
        np.testing.assert_allclose(
            [b for _, b in got[name]], [b for _, b in boxes], atol=1e-3 if normalized else 0, err_msg=name
        )
    assert report.num_boxes == 273 and report.num_images == 100 and report.num_fixes == 0
    assert sorted(class_names_of(ds["train"])) == sorted({c for v in expected.values() for c, _ in v})


def test_pascal_voc_is_one_based_and_keeps_difficult_flags(expected, tmp_path):
    """The original VOC files count pixels from 1; the other exports (made with CVAT) took the numbers as they were,
    so each VOC box starts one pixel earlier and is one pixel wider and taller than theirs."""
    ds, _ = load("pascalvoc_format", tmp_path)
    got = boxes_of(ds["train"])
    for name, boxes in expected.items():
        shifted = [(c, (x - 1, y - 1, w + 1, h + 1)) for c, (x, y, w, h) in boxes]
        assert got[name] == sorted(shifted), name
    assert sum(sum(objects["difficult"]) for objects in ds["train"]["objects"]) == 38
    ds, report = load("pascalvoc_format", tmp_path, include_difficult=False)
    assert report.num_boxes == 235 and report.count("difficult_excluded") == 38 and report.boxes_read == 273
    assert report.num_fixes == 0


def test_labelme_embedded_images_need_no_image_folder(expected, tmp_path):
    ds, report = load_detection_dataset(
        GTS / "labelme_format", val_fraction=0, cache_dir=str(tmp_path), verbose=False, return_report=True
    )
    assert boxes_of(ds["train"]) == expected and report.num_fixes == 0
    row = ds["train"].filter(lambda r: r["file_name"] == "2007_000027.jpg")[0]
    np.testing.assert_array_equal(np.asarray(row["image"]), np.asarray(Image.open(IMAGES / "2007_000027.jpg")))


def test_coco_ids_beyond_int32_and_category_ids_round_trip(tmp_path):
    source = json.loads((GTS / "coco_format_v2" / "instances_v2.json").read_text())
    ds, _ = load("coco_format_v2", tmp_path)
    assert sorted(ds["train"]["image_id"]) == sorted(i["id"] for i in source["images"])
    assert max(ds["train"]["image_id"]) > 2**31
    exported = export_coco(ds["train"])
    assert {c["id"]: c["name"] for c in exported["categories"]} == {c["id"]: c["name"] for c in source["categories"]}

    def key(a):
        return (a["id"], a["image_id"], a["category_id"], tuple(a["bbox"]), a["iscrowd"])

    assert sorted(map(key, exported["annotations"])) == sorted(map(key, source["annotations"]))
    counts = Counter(a["category_id"] for a in exported["annotations"])
    assert counts == Counter(a["category_id"] for a in source["annotations"])


def test_tfrecord_is_refused_with_a_clear_message():
    with pytest.raises(DatasetValidationError, match=r"tfrecord_format: only TFRecord files .*not read here"):
        detect_format(GTS / "tfrecord_format")
