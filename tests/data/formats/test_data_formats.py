"""Annotation formats -> datasets: exact boxes, classes and report counts for every format and its quirks; validation
(nothing lost, nothing silent); EXIF; image modes; splits; caching; round trips through COCO, VOC, YOLO and CSV."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    CLASSES,
    COCO_IDS,
    TRUTH,
    WRITERS,
    expected_rows,
    voc_xml,
    write_coco,
    write_image,
    write_images,
    write_voc,
    write_yolo,
    yolo_line,
)
from datasets import Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage
from PIL import ImageOps
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_hf.data import (
    ConversionReport,
    DatasetValidationError,
    cast_to_detection_schema,
    class_names_of,
    conversion,
    detection_features,
    export_coco,
    export_csv,
    export_voc,
    export_yolo,
    get_category_mapping,
    load_detection_dataset,
    save_detection_dataset,
)
from detr_hf.data.formats import detect_format
from detr_hf.data.formats.coordinates import exif_transpose_box

NORMALIZED = {"yolo", "openimages"}  # fractions written with 6+ digits: boxes agree to well below a pixel


def rows_of(ds: Dataset) -> list[tuple[str, int, int, list[tuple[str, list[float]]]]]:
    """(file name without folders, width, height, [(class, bbox)]) sorted by file name."""
    names = class_names_of(ds)
    rows = []
    for r in ds.select_columns(["file_name", "width", "height", "objects"]):
        objects = [(names[c], b) for c, b in zip(r["objects"]["category"], r["objects"]["bbox"])]
        rows.append((Path(r["file_name"]).name, r["width"], r["height"], objects))
    return sorted(rows)


def assert_rows_equal(got, expected, atol: float = 0.0) -> None:
    assert [r[:3] for r in got] == [r[:3] for r in expected]
    for g, e in zip(got, expected):
        assert [c for c, _ in g[3]] == [c for c, _ in e[3]], g[0]
        if e[3]:
            np.testing.assert_allclose([b for _, b in g[3]], [b for _, b in e[3]], atol=atol, rtol=0, err_msg=g[0])


# -- every format, same labels -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_each_format_gives_the_exact_labels(fmt, tmp_path, load):
    root = tmp_path / fmt
    WRITERS[fmt](root)
    assert detect_format(root) == fmt
    ds, report = load(root)
    assert list(ds) == ["train"]
    train = ds["train"]
    assert train.features == detection_features(CLASSES)
    expected = [r for r in expected_rows() if r[3] or fmt != "openimages"]  # Open Images lists boxes only
    assert_rows_equal(rows_of(train), expected, atol=1e-3 if fmt in NORMALIZED else 0.0)
    for r in train:
        assert (root / r["file_name"]).is_file()  # every record traces back to its file
        assert r["image"].size == (r["width"], r["height"]) and r["image"].mode == "RGB"
        objects = r["objects"]
        np.testing.assert_allclose(objects["area"], [w * h for _, _, w, h in objects["bbox"]], rtol=1e-6)
        assert set(objects["iscrowd"]) | set(objects["difficult"]) | set(objects["truncated"]) <= {0}
    n_boxes = sum(len(r[3]) for r in expected)
    assert report.num_images == len(expected) and report.num_boxes == n_boxes == report.boxes_read
    assert report.splits["train"].negatives == sum(1 for r in expected if not r[3])
    assert report.num_fixes == 0 and report.issues == []
    assert report.boxes_per_class == {"cat": 1, "dog": 1, "person": 1}


def test_all_formats_give_the_same_dataset(tmp_path, load):
    """Beyond boxes: the same features, flags, areas and ids order whatever the format (names match, not ids)."""
    reference = None
    for fmt in sorted(set(WRITERS) - {"openimages"}):
        WRITERS[fmt](tmp_path / fmt)
        train = load(tmp_path / fmt)[0]["train"]
        content = [
            {
                **{k: v for k, v in r.items() if k not in ("image", "file_name", "image_id")},
                "name": Path(r["file_name"]).name,
            }
            for r in train.remove_columns("image")
        ]
        content.sort(key=lambda row: row["name"])
        for row in content:
            row["objects"].pop("id")  # COCO keeps its annotation ids; other formats number boxes 1..N
            row["objects"]["bbox"] = np.round(row["objects"]["bbox"], 3).tolist()
            row["objects"]["area"] = np.round(row["objects"]["area"], 1).tolist()
        if reference is None:
            reference, features = content, train.features
        assert train.features == features, fmt
        assert content == reference, fmt


# -- format quirks -------------------------------------------------------------------------------------------------
def test_coco_sparse_ids_crowd_and_split_files(tmp_path, load):
    root = tmp_path / "coco"
    write_image(root / "train" / "a.jpg", 64, 48, seed=1)
    write_image(root / "val" / "a.jpg", 40, 30, seed=2)  # same file name in both splits
    cats = [{"id": 11, "name": "person"}, {"id": 3, "name": "cat"}]  # unsorted, sparse
    train = {
        "images": [{"id": 5, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 11, "bbox": [1, 2, 10, 20], "area": 150.5, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [30, 5, 20, 20], "area": 400, "iscrowd": 1},
            {"id": 3, "image_id": 5, "category_id": 99, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 4, "image_id": 77, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
        ],
        "categories": cats,
    }
    val = {
        "images": [{"id": 6, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": [{"id": 9, "image_id": 6, "category_id": 3, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 0}],
        "categories": cats,
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text(json.dumps(train))
    (root / "annotations" / "instances_val.json").write_text(json.dumps(val))
    ds, report = load(root, val_fraction=0.5)  # the source has a validation split: nothing is carved
    assert list(ds) == ["train", "validation"]
    assert class_names_of(ds["train"]) == ["cat", "person"]  # sorted by id
    t, v = ds["train"][0], ds["validation"][0]
    assert (t["file_name"], t["width"], t["image_id"]) == ("train/a.jpg", 64, 5)
    assert (v["file_name"], v["width"], v["image_id"]) == ("val/a.jpg", 40, 6)
    assert t["objects"]["bbox"] == [[1, 2, 10, 20], [30, 5, 20, 20]]
    assert t["objects"]["category"] == [1, 0] and t["objects"]["iscrowd"] == [0, 1]
    assert t["objects"]["area"] == [150.5, 400] and t["objects"]["id"] == [1, 2]
    assert report.count("unknown_class") == 1 and report.count("orphan_annotation") == 1
    unknown = report.issues_of("unknown_class")[0]
    assert (unknown.file, unknown.record) == ("annotations/instances_train.json", "annotation id 3")
    assert "99" in unknown.message
    assert report.boxes_read == 5 and report.num_boxes == 3
    mapping = get_category_mapping(ds["validation"])
    assert [(c.name, c.source_id) for c in mapping.categories] == [("cat", 3), ("person", 11)]


def test_coco_round_trip_keeps_every_annotation_and_id(tmp_path, load):
    """COCO -> dataset -> COCO: ids (a 64-bit image id too), category ids, boxes, areas and crowd flags survive."""
    root = tmp_path / "coco"
    source = write_coco(root)
    source["images"][0]["id"] = 20180000001  # beyond int32
    for ann in source["annotations"]:
        if ann["image_id"] == 1000:
            ann["image_id"] = 20180000001
    source["annotations"][0].update(iscrowd=1, area=123.25)  # crowd, and a segmentation area below w*h
    (root / "annotations.json").write_text(json.dumps(source))
    ds, _ = load(root)
    exported = export_coco(ds["train"], tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == exported

    def by_id(items):
        return {i["id"]: {k: i[k] for k in sorted(i) if k != "supercategory"} for i in items}

    assert by_id(exported["images"]) == by_id(source["images"])
    assert by_id(exported["annotations"]) == by_id(source["annotations"])
    assert exported["categories"] == source["categories"]
    # pycocotools reads it, and the ground truth scored against itself is perfect
    gt = COCO(str(tmp_path / "out.json"))
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in exported["annotations"]
        if not a["iscrowd"]
    ]
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_voc_one_based_flags_splits_and_labelmap(tmp_path, load):
    root = tmp_path / "voc"
    write_images(root / "JPEGImages")
    (root / "Annotations").mkdir()
    objects = [("dog", (4, 6, 30, 40)), ("cat", (0, 0, 64, 48))]
    (root / "Annotations" / "a.xml").write_text(voc_xml("a.jpg", 64, 48, objects, flags={0: (1, 0), 1: (0, 1)}))
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.png", 40, 60, [("person", (0, 0, 40, 60))]))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    (root / "ImageSets" / "Main" / "cat_train.txt").write_text("a 1\n")  # a class list, not a split
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\nperson:1,1,1::\ndog:2,2,2::\ncat:3,3,3::\n"
    )
    # a labelmap.txt marks a CVAT/Datumaro export (0-based corners by default); these corners are counted from 1
    ds, report = load(root, one_based=True)
    assert list(ds) == ["train", "validation"]
    assert class_names_of(ds["train"]) == ["person", "dog", "cat"]  # labelmap order
    a = ds["train"][0]["objects"]
    # 1-based inclusive corners: xmin=5..xmax=30 covers pixels 4..30 in continuous coordinates, width 26
    assert a["bbox"] == [[4, 6, 26, 34], [0, 0, 64, 48]]
    assert a["difficult"] == [1, 0] and a["truncated"] == [0, 1]
    assert report.num_fixes == 0
    ds, report = load(root, include_difficult=False, one_based=True)
    assert ds["train"][0]["objects"]["bbox"] == [[0, 0, 64, 48]]
    assert report.count("difficult_excluded") == 1 and report.boxes_read == 3 and report.num_fixes == 0
    # files from tools that write 0-based corners (CVAT, Datumaro)
    ds, _ = load(root, one_based=False)
    assert ds["train"][0]["objects"]["bbox"][0] == [5, 7, 25, 33]


def test_yolo_ultralytics_layout(tmp_path, load):
    root = tmp_path / "yolo"
    root.mkdir()
    (root / "data.yaml").write_text(
        "path: /elsewhere/not/here\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n  2: person\n"
    )
    for split, names in (("train", ["a.jpg", "c.jpg"]), ("val", ["b.png"])):
        for name in names:
            w, h, _ = TRUTH[name]
            write_image(root / "images" / split / name, w, h)
    labels = root / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "val").mkdir()
    (labels / "train" / "a.txt").write_text(
        f"{yolo_line('dog', (4, 6, 30, 40), 64, 48)}\n"
        "1 0.5 0.5 oops 0.1\n"  # malformed
        "7 0.5 0.5 0.1 0.1\n"  # class index outside the list
        "0 0.5 0.25 0.75 0.25 0.75 0.75 0.5 0.75\n"  # a segment: its box is x 0.5..0.75, y 0.25..0.75
    )
    (labels / "val" / "b.txt").write_text(yolo_line("person", (0, 0, 40, 60), 40, 60) + "\n")
    (labels / "train" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.1 0.1\n")  # no image
    ds, report = load(root)
    assert list(ds) == ["train", "validation"]
    rows = {Path(r[0]).name: r for r in rows_of(ds["train"])}
    assert rows["c.jpg"][3] == []  # no label file: a negative
    boxes = rows["a.jpg"][3]
    assert [c for c, _ in boxes] == ["dog", "cat"]
    np.testing.assert_allclose(boxes[0][1], [4, 6, 26, 34], atol=1e-3)
    np.testing.assert_allclose(boxes[1][1], [32, 12, 16, 24], atol=1e-3)
    malformed, unknown = report.issues_of("malformed")[0], report.issues_of("unknown_class")[0]
    assert (malformed.file, malformed.record) == ("labels/train/a.txt", "line 2")
    assert (unknown.file, unknown.record) == ("labels/train/a.txt", "line 3")
    orphan = report.issues_of("label_without_image")[0]
    assert orphan.file == "labels/train/ghost.txt" and orphan.boxes_lost == 2
    assert report.count("shape_to_box") == 1
    assert report.boxes_read == 3 + 1 + 1 + 2 and report.num_boxes == 3


def test_labelme_embedded_images_and_shapes(tmp_path, load):
    root = tmp_path / "labelme"
    WRITERS["labelme"](root, embed=True)
    assert not any(p.suffix in (".jpg", ".png") for p in root.iterdir())  # only the JSON files
    ds, report = load(root)
    assert_rows_equal(rows_of(ds["train"]), expected_rows())
    original = tmp_path / "originals"
    write_images(original)
    for r in ds["train"]:
        expected = np.asarray(PILImage.open(original / r["file_name"]).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(r["image"]), expected)  # the embedded bytes, not re-encoded
    data = json.loads((root / "a.json").read_text())
    data["shapes"] += [
        {"label": "cat", "points": [[1, 2], [9, 4], [5, 11]], "shape_type": "polygon"},
        {"label": "cat", "points": [[10, 10], [13, 14]], "shape_type": "circle"},
        {"label": "cat", "points": [[1, 1], [5, 5]], "shape_type": "line"},
    ]
    (root / "a.json").write_text(json.dumps(data))
    ds, report = load(root)
    a = ds["train"].filter(lambda r: r["file_name"] == "a.jpg")[0]["objects"]["bbox"]
    assert a[2:] == [[1, 2, 8, 9], [5, 5, 10, 10]]
    assert report.count("shape_to_box") == 2 and report.count("unsupported_shape") == 1
    assert report.issues_of("unsupported_shape")[0].record == "shape 5"


def test_cvat_labels_order_polygons_and_subsets(tmp_path, load):
    root = tmp_path / "cvat"
    write_images(root)
    xml = (
        '<?xml version="1.0"?><annotations><version>1.1</version><meta><project><labels>'
        "<label><name>person</name></label><label><name>dog</name></label><label><name>cat</name></label>"
        "</labels></project></meta>"
        '<image id="0" name="a.jpg" width="64" height="48" subset="Train">'
        '<box label="dog" xtl="4" ytl="6" xbr="30" ybr="40" occluded="0"></box>'
        '<polygon label="cat" points="32.5,8;60,20;40,44" occluded="0"></polygon>'
        '<box label="cat" xtl="10" ytl="10" xbr="20" ybr="14" rotation="90" occluded="0"></box>'
        '<polyline label="cat" points="1,1;2,2"></polyline><tag label="dog"></tag></image>'
        '<image id="1" name="b.png" width="40" height="60" subset="Validation"></image></annotations>'
    )
    (root / "annotations.xml").write_text(xml)
    ds, report = load(root)
    assert list(ds) == ["train", "validation"]
    assert class_names_of(ds["train"]) == ["person", "dog", "cat"]
    objects = ds["train"][0]["objects"]
    assert objects["bbox"][:2] == [[4, 6, 26, 34], [32.5, 8, 27.5, 36]]
    np.testing.assert_allclose(objects["bbox"][2], [13, 7, 4, 10], atol=1e-4)  # 10x4 box turned 90 degrees
    assert report.count("shape_to_box") == 2 and report.count("unsupported_shape") == 1
    assert ds["validation"][0]["objects"]["bbox"] == []


def test_csv_semicolons_decimal_commas_and_split_files(tmp_path, load):
    root = tmp_path / "csv"
    write_images(root)
    (root / "train.csv").write_text(
        "filename;width;height;class;xmin;ymin;xmax;ymax\na.jpg;64;48;dog;4,5;6;30;40\nc.jpg;50;50\n"
    )
    (root / "val.csv").write_text("filename,class,xmin,ymin,xmax,ymax\nb.png,person,0,0,40,60\n")
    ds, report = load(root)
    assert list(ds) == ["train", "validation"]
    assert rows_of(ds["train"]) == [("a.jpg", 64, 48, [("dog", [4.5, 6, 25.5, 34])]), ("c.jpg", 50, 50, [])]
    assert rows_of(ds["validation"]) == [("b.png", 40, 60, [("person", [0, 0, 40, 60])])]
    assert report.num_fixes == 0


# -- validation: nothing lost, nothing silent ----------------------------------------------------------------------
def test_boxes_outside_the_image_are_clipped_or_dropped_and_reported(tmp_path, load):
    root = tmp_path / "voc"
    write_voc(root)
    outside = [("dog", (-5, 10, 30, 70)), ("cat", (70, 0, 90, 10)), ("cat", (10, 10, 10, 20))]
    (root / "Annotations" / "a.xml").write_text(voc_xml("a.jpg", 64, 48, outside))
    ds, report = load(root)
    a = ds["train"][0]
    assert a["file_name"] == "JPEGImages/a.jpg"
    assert a["objects"]["bbox"] == [[0, 10, 30, 38]]  # clipped to the 64x48 image
    assert a["objects"]["area"] == [30 * 38]
    clipped = report.issues_of("box_clipped")
    assert len(clipped) == 1 and (clipped[0].file, clipped[0].record) == ("Annotations/a.xml", "object 1")
    assert "64x48" in clipped[0].message
    degenerate = report.issues_of("box_degenerate")
    assert [i.record for i in degenerate] == ["object 2", "object 3"]
    assert report.boxes_read == 3 + 1 and report.num_boxes == 2 and report.boxes_lost == 2
    text = str(report)
    assert "box_clipped" in text and "Annotations/a.xml: object 1" in text
    with pytest.raises(DatasetValidationError) as error:
        load(root, strict=True)
    assert str(clipped[0]) in str(error.value)


def test_unknown_classes_missing_and_broken_files_are_named(tmp_path, load):
    root = tmp_path / "voc"
    write_voc(root)
    (root / "Annotations" / "broken.xml").write_text(voc_xml("b.png", 40, 60, [("cat", (1, 1, 5, 5))])[:120])
    (root / "Annotations" / "lost.xml").write_text(voc_xml("lost.jpg", 10, 10, [("cat", (1, 1, 5, 5))]))
    data = (root / "JPEGImages" / "c.jpg").read_bytes()
    (root / "JPEGImages" / "c.jpg").write_bytes(data[: len(data) // 2])  # a truncated JPEG
    (root / "Annotations" / "c.xml").write_text(voc_xml("c.jpg", 50, 50, [("dog", (1, 1, 9, 9))]))
    ds, report = load(root, class_names=["dog", "person"])
    assert class_names_of(ds["train"]) == ["dog", "person"]
    assert rows_of(ds["train"]) == [
        ("a.jpg", 64, 48, [("dog", [4, 6, 26, 34])]),
        ("b.png", 40, 60, [("person", [0, 0, 40, 60])]),
    ]
    unknown = report.issues_of("unknown_class")[0]
    assert (unknown.file, unknown.record) == ("Annotations/a.xml", "object 2") and "'cat'" in unknown.message
    broken = report.issues_of("malformed")[0]
    assert broken.file == "Annotations/broken.xml" and broken.record.startswith("line ")
    missing = report.issues_of("missing_image")[0]
    assert missing.file == "Annotations/lost.xml" and "lost.jpg" in missing.message and missing.boxes_lost == 1
    undecodable = report.issues_of("image_undecodable")[0]
    assert undecodable.file == "Annotations/c.xml" and "c.jpg" in undecodable.message and undecodable.boxes_lost == 1
    assert report.num_boxes == 2 and report.boxes_read == 2 + 1 + 1 + 1  # broken.xml's box is not readable
    with pytest.raises(DatasetValidationError) as error:  # strict: the first fix, with the same message
        load(root, class_names=["dog", "person"], strict=True)
    assert str(report.issues[0]) in str(error.value)
    (root / "Annotations" / "broken.xml").unlink()
    (root / "Annotations" / "lost.xml").unlink()
    with pytest.raises(DatasetValidationError, match=r"Annotations/a\.xml: object 2: class 'cat'"):
        load(root, class_names=["dog", "person"], strict=True)
    with pytest.raises(DatasetValidationError, match=r"Annotations/c\.xml: .*c\.jpg does not decode"):
        load(root, strict=True)


def test_strict_raises_from_worker_processes(tmp_path, load, monkeypatch):
    monkeypatch.setattr(conversion, "SHARD_SIZE", 1)  # one image per shard, so that both workers get some
    root = tmp_path / "voc"
    write_voc(root)
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.png", 40, 60, [("person", (0, 0, 41, 60))]))
    with pytest.raises(DatasetValidationError, match=r"Annotations/b\.xml: object 1: .*clipped"):
        load(root, strict=True, num_proc=2)


def test_num_proc_gives_the_same_dataset_and_report(tmp_path, load, monkeypatch):
    monkeypatch.setattr(conversion, "SHARD_SIZE", 1)
    root = tmp_path / "voc"
    write_voc(root)
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.png", 40, 60, [("person", (0, 0, 41, 60))]))
    one, report_one = load(root)
    two, report_two = load(root, num_proc=2)
    assert rows_of(one["train"]) == rows_of(two["train"])
    assert [str(i) for i in report_one.issues] == [str(i) for i in report_two.issues]


def test_cache_reuses_results_and_sees_changes(tmp_path, load):
    root = tmp_path / "voc"
    write_voc(root)
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.png", 40, 60, [("person", (0, 0, 41, 60))]))
    first, report1 = load(root)
    second, report2 = load(root)
    assert first["train"].cache_files == second["train"].cache_files  # the second run read the first one's files
    assert [str(i) for i in report2.issues] == [str(i) for i in report1.issues] and report2.count("box_clipped") == 1
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.png", 40, 60, [("person", (0, 0, 20, 60))]))
    third, report3 = load(root)
    assert report3.count("box_clipped") == 0
    assert rows_of(third["train"])[1][3] == [("person", [0, 0, 20, 60])]


# -- images: EXIF, modes -------------------------------------------------------------------------------------------
def _exif_png(path: Path, orientation: int) -> Path:
    """A 60x40 stored image, white over x 10..30, y 5..12, with an EXIF orientation."""
    raw = np.zeros((40, 60, 3), np.uint8)
    raw[5:12, 10:30] = 255
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(raw).save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_transpose_box_matches_pil(orientation, tmp_path):
    with PILImage.open(_exif_png(tmp_path / "x.png", orientation)) as image:
        shown = np.asarray(ImageOps.exif_transpose(image))[..., 0]
    ys, xs = np.nonzero(shown)
    expected = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert exif_transpose_box((10, 5, 30, 12), orientation, 60, 40) == expected


def test_exif_orientation_keeps_boxes_on_what_a_person_sees(tmp_path, load):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    _exif_png(root / "JPEGImages" / "stored.png", 6)  # stored 60x40, shown 40x60
    _exif_png(root / "JPEGImages" / "shown.png", 6)
    # one tool drew on the stored pixels (and wrote their size), the other on the image as shown
    (root / "Annotations" / "stored.xml").write_text(voc_xml("stored.png", 60, 40, [("cat", (10, 5, 30, 12))]))
    (root / "Annotations" / "shown.xml").write_text(voc_xml("shown.png", 40, 60, [("cat", (28, 10, 35, 30))]))
    ds, report = load(root)
    for r in ds["train"]:
        assert (r["width"], r["height"]) == (40, 60) and r["image"].size == (40, 60)
        ys, xs = np.nonzero(np.asarray(r["image"])[..., 0] > 127)  # where the white block is on screen
        x, y, w, h = r["objects"]["bbox"][0]
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), r["file_name"]
    assert report.count("exif_rotated") == 1 and report.issues_of("exif_rotated")[0].file == "Annotations/stored.xml"
    assert report.num_fixes == 0


def test_grayscale_16bit_rgba_and_palette_images_load(tmp_path, load):
    root = tmp_path / "coco"
    root.mkdir()
    gray16 = np.full((20, 30), 40000, np.uint16)
    PILImage.fromarray(gray16).save(root / "deep.png")
    PILImage.fromarray(np.full((20, 30), 77, np.uint8)).save(root / "gray.png")
    PILImage.fromarray(np.full((20, 30, 4), (10, 20, 30, 128), np.uint8)).save(root / "rgba.png")
    PILImage.fromarray(np.full((20, 30, 3), 200, np.uint8)).convert("P").save(root / "palette.png")
    names = ["deep.png", "gray.png", "rgba.png", "palette.png"]
    coco = {
        "images": [{"id": k + 1, "file_name": n, "width": 30, "height": 20} for k, n in enumerate(names)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "coco.json").write_text(json.dumps(coco))
    ds, report = load(root)
    pixels = {r["file_name"]: np.asarray(r["image"]) for r in ds["train"]}
    assert all(p.shape == (20, 30, 3) for p in pixels.values())
    assert (pixels["deep.png"] == 40000 >> 8).all()  # the top 8 bits, as OpenCV reads 16-bit images
    assert (pixels["gray.png"] == 77).all() and (pixels["rgba.png"][0, 0] == (10, 20, 30)).all()
    np.testing.assert_array_equal(pixels["palette.png"], np.asarray(PILImage.open(root / "palette.png").convert("RGB")))
    assert report.count("image_converted") == 1 and report.num_fixes == 0


# -- splits, saving, foreign schemas -------------------------------------------------------------------------------
def test_validation_split_is_deterministic(tmp_path, load):
    root = tmp_path / "yolo"
    (root).mkdir()
    (root / "classes.txt").write_text("cat\n")
    for k in range(10):
        write_image(root / f"{k:02d}.png", 8, 8, seed=k)
    ds, report = load(root, val_fraction=0.3, split_seed=0)
    again, _ = load(root, val_fraction=0.3, split_seed=0)
    other, _ = load(root, val_fraction=0.3, split_seed=1)
    names = {s: sorted(ds[s]["file_name"]) for s in ds}
    assert len(names["train"]) >= 1 and len(names["validation"]) >= 1  # about 30%: a hash threshold per file name
    assert sorted(names["train"] + names["validation"]) == [f"{k:02d}.png" for k in range(10)]
    assert names["validation"] == sorted(again["validation"]["file_name"])
    assert names["validation"] != sorted(other["validation"]["file_name"])
    assert report.splits["train"].negatives == len(names["train"])  # images without label files stay, as negatives


def test_save_and_reload_keeps_schema_mapping_and_report(tmp_path, load):
    root = tmp_path / "coco"
    write_coco(root)
    ds, report = load(root)
    out = save_detection_dataset(ds, tmp_path / "saved", report)
    assert {"dataset_dict.json", "categories.json", "conversion_report.json"} <= {p.name for p in out.iterdir()}
    again, report2 = load(out)
    assert report2.format == "saved" and report2.num_boxes == report.num_boxes and report2.issues == []
    assert rows_of(again["train"]) == rows_of(ds["train"])
    assert again["train"].features == detection_features(CLASSES)
    assert {c.name: c.source_id for c in get_category_mapping(again["train"]).categories} == COCO_IDS
    saved_report = ConversionReport.load(out)
    assert saved_report.num_boxes == 3 and saved_report.splits["train"].negatives == 1
    assert export_coco(again["train"])["categories"][0] == {"id": 3, "name": "cat", "supercategory": "thing"}
    # a reordered, shorter class list: boxes of the left-out class are reported, source ids follow the names
    cut, report3 = load(out, class_names=["person", "cat"])
    assert [(c.name, c.source_id) for c in get_category_mapping(cut["train"]).categories] == [
        ("person", 11),
        ("cat", 3),
    ]
    assert report3.count("unknown_class") == 1 and report3.num_boxes == 2
    assert rows_of(cut["train"])[0][3] == [("cat", [32, 8, 28, 36])]


def test_foreign_schemas_are_cast(tmp_path, load):
    """`categories` for `category`, plain ints, a list of structs, no ids/areas/flags/file names."""
    image = PILImage.fromarray(np.zeros((20, 30, 3), np.uint8))
    path = tmp_path / "img.png"
    image.save(path)
    features = Features(
        {
            "image_id": Value("int64"),
            "image": Image(),
            "width": Value("int32"),
            "height": Value("int32"),
            "objects": List({"bbox": List(Value("float32"), length=4), "categories": Value("int64")}),
        }
    )
    rows = {
        "image_id": [7],
        "image": [str(path)],
        "width": [30],
        "height": [20],
        "objects": [[{"bbox": [1, 2, 3, 4], "categories": 1}, {"bbox": [25, 0, 10, 5], "categories": 0}]],
    }
    foreign = Dataset.from_dict(rows, features=features)
    cast, issues = cast_to_detection_schema(foreign, class_names=["a", "b"])
    assert cast.features == detection_features(["a", "b"])
    r = cast[0]
    assert r["objects"]["bbox"] == [[1, 2, 3, 4], [25, 0, 5, 5]] and r["objects"]["category"] == [1, 0]
    assert r["objects"]["area"] == [12, 25] and r["file_name"] == "img.png" and r["image_id"] == 7
    assert [i.kind for i in issues] == ["box_clipped"]
    # the same data saved to disk loads through load_detection_dataset, cast on the way
    foreign.save_to_disk(str(tmp_path / "foreign"))
    ds, report = load(tmp_path / "foreign", class_names=["a", "b"])
    assert ds["train"].features == detection_features(["a", "b"]) and report.count("box_clipped") == 1
    # a dataset already in the schema is left alone
    assert cast_to_detection_schema(cast)[0] is cast


def test_hub_style_dataset_folder_loads(tmp_path, load):
    """A local dataset repo (Parquet files) goes through datasets.load_dataset like a Hub name would."""
    root = tmp_path / "coco"
    write_coco(root)
    ds, _ = load(root)
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    renamed = ds["train"].rename_column("objects", "objects_tmp")
    renamed = renamed.map(
        lambda r: {"objects": {"bbox": r["objects_tmp"]["bbox"], "categories": r["objects_tmp"]["category"]}}
    )
    renamed.remove_columns("objects_tmp").to_parquet(str(repo / "data" / "train.parquet"))
    # to_parquet keeps the images as paths into the COCO folder, outside the repo: allowed explicitly
    loaded, report = load(str(repo), format="hub", class_names=CLASSES, image_roots=[root])
    assert_rows_equal(rows_of(loaded["train"]), rows_of(ds["train"]))
    assert report.num_boxes == 3


def test_exports_read_back_as_the_same_dataset(tmp_path, load):
    root = tmp_path / "coco"
    write_coco(root)
    ds, _ = load(root)
    train = ds["train"]
    export_voc(train, tmp_path / "voc")
    export_yolo(train, tmp_path / "yolo")
    export_csv(train, tmp_path / "csv" / "labels.csv")
    shutil.copytree(root, tmp_path / "csv", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.json"))
    for fmt, atol in (("voc", 0), ("yolo", 1e-3), ("csv", 0)):
        assert detect_format(tmp_path / fmt) == fmt
        back, report = load(tmp_path / fmt)
        assert back["train"].num_rows == 3 and report.num_fixes == 0, fmt
        assert_rows_equal(rows_of(back["train"]), rows_of(train), atol=atol)


def test_detection_reports_ambiguous_and_unsupported_folders(tmp_path):
    both = tmp_path / "both"
    write_voc(both)
    write_yolo(both / "JPEGImages")
    with pytest.raises(DatasetValidationError, match=r"several formats: .*voc.*yolo|several formats: .*yolo.*voc"):
        detect_format(both)
    tf = tmp_path / "tf"
    tf.mkdir()
    (tf / "default.tfrecord").write_bytes(b"\0" * 16)
    with pytest.raises(DatasetValidationError, match="TFRecord is not read"):
        detect_format(tf)


def test_truncated_coco_json_names_the_file(tmp_path, load):
    root = tmp_path / "coco"
    write_coco(root)
    text = (root / "annotations.json").read_text()
    (root / "annotations.json").write_text(text[: len(text) // 2])
    with pytest.raises(DatasetValidationError, match=r"annotations\.json: not valid JSON"):
        load(root, format="coco")


def test_embedded_labelme_image_that_does_not_decode(tmp_path, load):
    root = tmp_path / "labelme"
    WRITERS["labelme"](root, embed=True)
    data = json.loads((root / "b.json").read_text())
    data["imageData"] = base64.b64encode(b"not an image").decode()
    (root / "b.json").write_text(json.dumps(data))
    ds, report = load(root)
    assert sorted(ds["train"]["file_name"]) == ["a.jpg", "c.jpg"]
    issue = report.issues_of("image_undecodable")[0]
    assert issue.file == "b.json" and "imageData" in issue.message and issue.boxes_lost == 1


def test_dataset_dict_type(tmp_path, load):
    root = tmp_path / "coco"
    write_coco(root)
    ds = load_detection_dataset(root, cache_dir=str(tmp_path / "c"), verbose=False)
    assert isinstance(ds, DatasetDict) and set(ds) == {"train", "validation"}  # 10% of 3 images rounds up to one
    assert ds["validation"].num_rows == 1


def test_truncated_files_keep_every_complete_record(tmp_path, load):
    """A file cut short (an interrupted export) loses only what is cut: the complete records before it are kept."""
    cvat = tmp_path / "cvat"
    WRITERS["cvat"](cvat)
    text = (cvat / "annotations.xml").read_text()
    (cvat / "annotations.xml").write_text(text[: text.index('<image id="1"') + 30])
    ds, report = load(cvat, format="cvat")
    assert rows_of(ds["train"]) == [("a.jpg", 64, 48, [("dog", [4, 6, 26, 34]), ("cat", [32, 8, 28, 36])])]
    issue = report.issues_of("malformed")[0]
    assert issue.file == "annotations.xml" and issue.record.startswith("line ")

    yolo = tmp_path / "yolo"
    write_yolo(yolo)
    lines = (yolo / "a.txt").read_text().splitlines()
    (yolo / "a.txt").write_text(lines[0] + "\n" + lines[1][:9])  # the last line cut mid-number
    ds, report = load(yolo)
    assert [c for c, _ in rows_of(ds["train"])[0][3]] == ["dog"]
    issue = report.issues_of("malformed")[0]
    assert (issue.file, issue.record, issue.boxes_lost) == ("a.txt", "line 2", 1)

    csv = tmp_path / "csv"
    WRITERS["csv"](csv)
    text = (csv / "labels.csv").read_text()
    (csv / "labels.csv").write_text(text[: text.index("images/a.jpg,64,48,cat") + 26])
    ds, report = load(csv)
    assert [c for c, _ in rows_of(ds["train"])[0][3]] == ["dog"]
    assert [(i.file, i.record) for i in report.issues_of("malformed")] == [("labels.csv", "line 3")]


def test_category_mapping_survives_dataset_operations(tmp_path, load):
    root = tmp_path / "coco"
    write_coco(root)
    train = load(root)[0]["train"]
    changed = train.map(lambda r: {"width": r["width"]}).filter(lambda r: r["width"] > 0).select([0, 1])
    assert {c.name: c.source_id for c in get_category_mapping(changed).categories} == COCO_IDS
    assert [c["id"] for c in export_coco(changed)["categories"]] == [3, 7, 11]


# -- one module per concept: box conversions, categories -------------------------------------------------------------
@pytest.mark.parametrize("name", ["cxcywh_to_xyxy", "xyxy_to_cxcywh", "xywh_to_xyxy", "xyxy_to_xywh"])
def test_box_conversions_agree_on_tensors_arrays_and_single_boxes(name):
    """detr_hf.box_ops is the one place of box conversions: a tensor, an array and one box give the same numbers."""
    import torch

    from detr_hf import box_ops

    convert = getattr(box_ops, name)
    boxes = np.array([[10.0, 20.0, 30.0, 60.0], [0.25, 0.5, 0.75, 1.0]])
    from_tensor = convert(torch.from_numpy(boxes))
    from_array = convert(boxes)
    assert isinstance(from_tensor, torch.Tensor) and isinstance(from_array, np.ndarray)
    for k, box in enumerate(boxes.tolist()):
        one = convert(box)
        assert isinstance(one, tuple) and all(type(v) is float for v in one)
        assert one == tuple(from_array[k]) == tuple(from_tensor[k].tolist())
    inverse = {"cxcywh_to_xyxy": "xyxy_to_cxcywh", "xywh_to_xyxy": "xyxy_to_xywh"}
    inverse |= {v: k for k, v in inverse.items()}
    np.testing.assert_allclose(getattr(box_ops, inverse[name])(from_array), boxes)
    with pytest.raises(ValueError):
        convert([1.0, 2.0, 3.0])


def test_reader_categories_and_dataset_categories_are_one_type(tmp_path):
    """A reader's class list is schema.Category (without labels); the mapping gives labels and keeps source ids."""
    from detr_hf.data.formats import READERS
    from detr_hf.data.formats.base import ReadContext
    from detr_hf.data.schema import Category, CategoryMapping

    write_coco(tmp_path, file_name="instances_train.json")
    data = READERS["coco"](ReadContext(tmp_path, tmp_path, ConversionReport()), files=["instances_train.json"])
    list(data.images)
    assert all(type(c) is Category and c.label is None for c in data.categories)
    source = {c.name: c.source_id for c in data.categories}
    names = [CLASSES[2], CLASSES[0], "unseen"]  # reordered, cut and extended by the user's class list
    mapping = CategoryMapping.for_names(names, data.categories)
    assert [(c.label, c.name, c.source_id) for c in mapping.categories] == [
        (0, CLASSES[2], source[CLASSES[2]]), (1, CLASSES[0], source[CLASSES[0]]), (2, "unseen", None)
    ]  # fmt: skip
    assert mapping.source_id(2) == 2 and CategoryMapping.default(names) == CategoryMapping.for_names(names)
