"""The loading pipeline around the readers: categories out of range, where images may be read from (and found when
written on another machine), empty or wrong-format input, large images, a validation split that stays put, EXIF
notes, and text files read the same under any locale."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_fixtures import CLASSES, TRUTH, voc_xml, write_image, write_voc
from datasets import Dataset, Features, Image, List, Value
from PIL import ExifTags
from PIL import Image as PILImage

from detr_hf import cli
from detr_hf.data import (
    ConversionReport,
    DatasetValidationError,
    class_names_of,
    detection_features,
    save_detection_dataset,
    schema,
)
from detr_hf.data import report as report_module
from detr_hf.data.formats.base import ReadContext


def write_coco(root: Path, images: list[tuple[str, int, int, list]], make: bool = True) -> None:
    """A COCO file ``annotations.json`` in ``root`` naming ``images`` ((file_name, w, h, [xywh boxes of "cat"]));
    the image files are written under ``root`` at their file_name when ``make``."""
    root.mkdir(parents=True, exist_ok=True)
    entries, annotations = [], []
    for k, (name, w, h, boxes) in enumerate(images):
        entries.append({"id": k + 1, "file_name": name, "width": w, "height": h})
        if make:
            write_image(root / name, w, h, seed=k)
        for box in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": k + 1, "category_id": 1, "bbox": box, "iscrowd": 0}
            )
    coco = {"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}]}
    (root / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")


def png_bytes(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- 1. categories out of range ---------------------------------------------------------------------------------------
def test_negative_or_too_large_plain_categories_are_unknown_class(tmp_path, load):
    """Plain integer categories (a foreign schema): -1 must not become the last class by Python's negative index."""
    features = Features(
        {
            "image": Image(),
            "objects": {"bbox": List(List(Value("float32"), length=4)), "category": List(Value("int64"))},
        }
    )
    boxes = [[0, 0, 2, 2], [1, 1, 2, 2], [2, 2, 2, 2]]
    rows = {"image": [{"bytes": png_bytes(), "path": "a.png"}], "objects": [{"bbox": boxes, "category": [0, -1, 3]}]}
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    ds, report = load(tmp_path / "saved", class_names=["a", "b", "c"])
    assert ds["train"][0]["objects"]["category"] == [0]
    assert report.count("unknown_class") == 2 and report.boxes_lost == 2 and report.num_boxes == 1
    assert any("-1" in i.message for i in report.issues_of("unknown_class"))
    with pytest.raises(DatasetValidationError, match=r"row 0, object 1.*-1.*unknown_class"):
        load(tmp_path / "saved", class_names=["a", "b", "c"], strict=True)


def test_negative_category_in_a_dataset_already_in_the_schema(tmp_path, load):
    """A ClassLabel column holding -1 (ClassLabel's "no label"): dropped and counted, not the last class or a crash."""
    features = detection_features(["a", "b", "c"])
    objects = {
        "id": [1, 2],
        "area": [4.0, 4.0],
        "bbox": [[0, 0, 2, 2], [1, 1, 2, 2]],
        "category": [0, -1],
        "iscrowd": [0, 0],
        "difficult": [0, 0],
        "truncated": [0, 0],
    }
    row = {"image_id": 1, "image": {"bytes": png_bytes(), "path": "a.png"}, "width": 8, "height": 6}
    Dataset.from_list([{**row, "file_name": "a.png", "objects": objects}], features=features).save_to_disk(
        str(tmp_path / "saved")
    )
    ds, report = load(tmp_path / "saved")
    assert ds["train"][0]["objects"]["category"] == [0] and class_names_of(ds["train"]) == ["a", "b", "c"]
    assert report.count("unknown_class") == 1 and report.boxes_per_class == {"a": 1, "b": 0, "c": 0}


# -- 2a. paths written on another machine ---------------------------------------------------------------------------
def test_absolute_path_from_another_machine_matches_the_longest_tail(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "data" / "obj" / "img1.jpg", 8, 8)
    write_image(root / "backup" / "img1.jpg", 8, 8)  # same name, shorter matching tail
    write_image(root / "a" / "obj" / "img2.jpg", 8, 8)
    write_image(root / "b" / "obj" / "img2.jpg", 8, 8)  # tied with a/obj/img2.jpg: not guessed
    report = ConversionReport()
    ctx = ReadContext(root, root, report)
    found = ctx.resolve_image("/content/darknet/data/obj/img1.jpg", ann_file="train.txt", record="line 1")
    assert found == root / "data" / "obj" / "img1.jpg"
    assert ctx.resolve_image("C:\\Users\\me\\darknet\\data\\obj\\img1.jpg") == found  # a Windows path too
    assert ctx.resolve_image("/content/x/obj/img2.jpg") is None
    (note, _) = report.issues_of("path_relocated")
    assert (note.file, note.record) == ("train.txt", "line 1")
    assert "/content/darknet/data/obj/img1.jpg" in note.message and "data/obj/img1.jpg" in note.message
    assert not note.message.startswith("/content")


def test_coco_with_absolute_paths_of_another_machine_loads_every_image(tmp_path, load):
    root = tmp_path / "coco"
    names = [f"images/{k}.jpg" for k in range(3)]
    for k, name in enumerate(names):
        write_image(root / name, 10, 10, seed=k)
    write_coco(root, [(f"/home/someone/coco/{n}", 10, 10, [[1, 1, 3, 3]]) for n in names], make=False)
    ds, report = load(root)
    assert sorted(ds["train"]["file_name"]) == names and report.num_boxes == 3
    assert report.count("missing_image") == 0 and report.count("path_relocated") == 3
    assert report.num_fixes == 0  # a note: strict=True accepts it
    notes = report.issues_of("path_relocated")
    assert {i.file for i in notes} == {"annotations.json"} and notes[0].record == "image id 1"


def test_darknet_list_with_colab_paths(tmp_path, load):
    """Darknet's train.txt written on Colab: /content/darknet/data/obj/..., the images now under <dataset>/data/obj."""
    root = tmp_path / "darknet"
    (root / "data" / "obj").mkdir(parents=True)
    (root / "data" / "obj.names").write_text("cat\n", encoding="utf-8")
    (root / "data" / "obj.data").write_text(
        "classes = 1\ntrain = data/train.txt\nnames = data/obj.names\n", encoding="utf-8"
    )
    lines = []
    for k in range(3):
        write_image(root / "data" / "obj" / f"img{k}.jpg", 10, 10, seed=k)
        (root / "data" / "obj" / f"img{k}.txt").write_text("0 0.5 0.5 0.2 0.2\n", encoding="utf-8")
        lines.append(f"/content/darknet/data/obj/img{k}.jpg")
    (root / "data" / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds, report = load(root, format="yolo")
    assert sorted(ds["train"]["file_name"]) == [f"data/obj/img{k}.jpg" for k in range(3)]
    assert report.count("missing_image") == 0 and report.num_boxes == 3 and report.count("path_relocated") == 3


# -- 2b. images outside the dataset folder ---------------------------------------------------------------------------
@pytest.mark.parametrize("absolute", [False, True])
def test_annotation_naming_an_image_outside_the_dataset_is_refused(tmp_path, load, absolute):
    secret = write_image(tmp_path / "private" / "secret.png", 12, 12)
    root = tmp_path / "coco"
    write_image(root / "a.jpg", 10, 10)
    name = str(secret) if absolute else "../private/secret.png"
    write_coco(root, [("a.jpg", 10, 10, [[1, 1, 3, 3]]), (name, 12, 12, [[1, 1, 3, 3]])], make=False)
    with pytest.raises(DatasetValidationError, match=r"annotations\.json: image id 2: .*secret\.png.*outside"):
        load(root)
    # allowed explicitly: read from there
    ds, report = load(root, image_roots=[tmp_path / "private"])
    assert sorted(ds["train"]["file_name"]) == ["a.jpg", "secret.png"] and report.num_images == 2


def test_paths_inside_the_dataset_folder_are_fine_and_outside_names_match_inside(tmp_path, load):
    write_image(tmp_path / "elsewhere" / "b.jpg", 10, 10, seed=5)  # exists outside, but the dataset has its own b.jpg
    root = tmp_path / "coco"
    write_image(root / "a.jpg", 10, 10)
    write_image(root / "images" / "b.jpg", 10, 10)
    write_coco(root, [(str(root / "a.jpg"), 10, 10, []), ("../elsewhere/b.jpg", 10, 10, [[1, 1, 3, 3]])], make=False)
    ds, report = load(root)
    assert sorted(ds["train"]["file_name"]) == ["a.jpg", "images/b.jpg"]
    (note,) = report.issues_of("path_relocated")  # only the one written outside
    assert note.record == "image id 2" and "outside" in note.message


def test_coco_file_in_an_annotations_folder_reads_the_images_beside_that_folder(tmp_path, load):
    """``ds/annotations/x.json`` naming ``a.jpg`` in ``ds/images``: the dataset folder is ``ds``, not refused."""
    write_coco(tmp_path / "ds" / "annotations", [("a.jpg", 10, 10, [[1, 1, 3, 3]])], make=False)
    write_image(tmp_path / "ds" / "images" / "a.jpg", 10, 10)
    _, report = load(tmp_path / "ds" / "annotations" / "annotations.json")
    assert report.num_images == 1 and report.num_boxes == 1


def test_hub_dataset_with_images_stored_by_path_outside_its_folder_is_refused(tmp_path, load):
    """Parquet rows whose image has no bytes, only a path to a local file elsewhere: decoding would read that file."""
    secret = write_image(tmp_path / "private" / "secret.png", 12, 12)
    features = detection_features(["cat"])
    objects = {k: [] for k in ("id", "area", "bbox", "category", "iscrowd", "difficult", "truncated")}
    rows = [
        {"image_id": 1, "image": {"bytes": png_bytes(), "path": "../../etc/a.png"}, "width": 8, "height": 6,
         "file_name": "/etc/a.png", "objects": {**objects, "bbox": [[1, 1, 2, 2]], "category": [0], "id": [1],
                                                "area": [4.0], "iscrowd": [0], "difficult": [0], "truncated": [0]}},
        {"image_id": 2, "image": {"bytes": None, "path": str(secret)}, "width": 12, "height": 12,
         "file_name": "secret.png", "objects": objects},
    ]  # fmt: skip
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    table = Dataset.from_list(rows, features=features).data.table  # written as is: to_parquet would not embed either
    pq.write_table(table, repo / "data" / "train.parquet")
    with pytest.raises(DatasetValidationError, match=r"secret\.png.*outside"):
        load(str(repo), format="hub")
    # the first row alone: its file_name and path are only names (the bytes are stored), nothing is read through them
    pq.write_table(table.slice(0, 1), repo / "data" / "train.parquet")
    ds, report = load(str(repo), format="hub")
    assert ds["train"][0]["image"].size == (8, 6) and report.num_boxes == 1
    pq.write_table(table, repo / "data" / "train.parquet")
    ds, report = load(str(repo), format="hub", image_roots=[tmp_path / "private"])  # allowed explicitly
    assert ds["train"].num_rows == 2


# -- 3. nothing to train on ------------------------------------------------------------------------------------------
def test_wrong_format_without_classes_raises_naming_folder_and_format(tmp_path, load):
    root = tmp_path / "voc"
    write_voc(root)
    with pytest.raises(DatasetValidationError, match=r"voc: reading it as 'yolo' found 3 images and 0 classes") as e:
        load(root, format="yolo")
    assert "format='voc'" in str(e.value)  # what the folder looks like


def test_no_images_raises(tmp_path, load):
    root = tmp_path / "coco"
    write_coco(root, [(name, w, h, []) for name, (w, h, _) in TRUTH.items()], make=False)
    with pytest.raises(DatasetValidationError, match=r"coco: reading it as 'coco' found 0 images.*missing_image=3"):
        load(root)


def test_cli_convert_of_unusable_input_exits_with_the_message(tmp_path, capsys):
    voc = tmp_path / "voc"
    write_voc(voc)
    status = cli.main(["convert", str(voc), "--format", "yolo", "-o", str(tmp_path / "out"), "--cache-dir",
                       str(tmp_path / "c")])  # fmt: skip
    assert status == 2
    error = capsys.readouterr().err
    assert str(voc) in error and "'yolo'" in error and "0 classes" in error
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "coco"
    write_coco(empty, [("a.jpg", 10, 10, [[1, 1, 3, 3]])], make=False)
    status = cli.main(["convert", str(empty), "-o", str(tmp_path / "out2"), "--cache-dir", str(tmp_path / "c")])
    assert status == 2 and "0 images" in capsys.readouterr().err


# -- 4. large images -------------------------------------------------------------------------------------------------
def test_large_image_within_pils_limit_loads(tmp_path, load):
    """9500x9500 (90 M pixels) is above PIL.Image.MAX_IMAGE_PIXELS, where PIL only warns: it must load."""
    root = tmp_path / "coco"
    root.mkdir()
    PILImage.new("1", (9500, 9500), 1).save(root / "big.png")  # 1 bit, one colour: a small file, 11 MB decoded
    write_image(root / "small.png", 10, 10)
    write_coco(root, [("big.png", 9500, 9500, [[100, 100, 3000, 2000]]), ("small.png", 10, 10, [])], make=False)
    ds, report = load(root)
    assert report.count("image_undecodable") == 0 and report.num_boxes == 1
    sizes = ds["train"].select_columns(["file_name", "width", "height"]).to_list()  # not decoded: 270 MB as RGB
    assert sizes[0] == {"file_name": "big.png", "width": 9500, "height": 9500}
    _, report = load(root, max_image_pixels=9500 * 9500 - 1)  # the limit applies to this same image
    (issue,) = report.issues_of("image_undecodable")
    assert "max_image_pixels" in issue.message


def test_max_image_pixels_option(tmp_path, load, monkeypatch):
    root = tmp_path / "coco"
    write_coco(root, [("a.png", 40, 40, [[1, 1, 3, 3]]), ("b.png", 10, 10, [[1, 1, 3, 3]])])
    _, report = load(root, max_image_pixels=1000)
    assert [i.file for i in report.issues_of("image_undecodable")] == ["annotations.json"] and report.num_images == 1
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # PIL alone would now refuse a.png (1600 > 2 * 100)
    _, report = load(root, max_image_pixels=None)
    assert report.num_images == 2 and report.count("image_undecodable") == 0
    assert PILImage.MAX_IMAGE_PIXELS == 100  # PIL's own setting is left as it was


# -- 5. a validation split that stays put ----------------------------------------------------------------------------
def test_carved_validation_is_stable_when_images_are_added():
    from detr_hf.data.splits import carve_validation

    names = [f"img_{k:04d}.jpg" for k in range(200)]

    def validation(keys, **kwargs):
        return {k for k, chosen in zip(keys, carve_validation(keys, 0.1, **kwargs)) if chosen}

    before = validation(names, split_seed=0)
    assert 10 <= len(before) <= 30
    for extra in ("img_9999.jpg", "aaa.jpg", "img_0100b.jpg"):
        after = validation([*names, extra], split_seed=0)
        assert before <= after and after - before <= {extra}
    assert validation(list(reversed(names)), split_seed=0) == before  # order does not matter either
    other = validation(names, split_seed=1)
    assert other != before and 10 <= len(other) <= 30
    assert validation(["a.jpg", "b.jpg"], split_seed=0) in ({"a.jpg"}, {"b.jpg"})  # at least one, never all
    assert sum(carve_validation(["a.jpg", "b.jpg", "c.jpg"], 0.99, split_seed=0)) == 2
    assert not any(carve_validation(names, 0.0, split_seed=0))


def test_validation_split_follows_file_names_not_the_training_seed(tmp_path, load):
    root = tmp_path / "coco"
    entries = [(f"{k:03d}.png", 4, 4, [[0, 0, 2, 2]]) for k in range(200)]
    for name, *_ in entries:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        PILImage.new("RGB", (4, 4)).save(root / name)
    write_coco(root, entries, make=False)
    ds, report = load(root, val_fraction=0.1, verify_images=False)
    validation = set(ds["validation"]["file_name"])
    assert 10 <= len(validation) <= 30 and len(validation) + ds["train"].num_rows == 200
    assert any("split_seed=0" in n for n in report.notes)
    PILImage.new("RGB", (4, 4)).save(root / "new.png")
    write_coco(root, [*entries, ("new.png", 4, 4, [])], make=False)
    grown, _ = load(root, val_fraction=0.1, verify_images=False)
    assert validation <= set(grown["validation"]["file_name"])
    other, _ = load(root, val_fraction=0.1, verify_images=False, split_seed=7)
    assert set(other["validation"]["file_name"]) != set(grown["validation"]["file_name"])
    with pytest.raises(TypeError, match="split_seed"):
        load(root, val_fraction=0.1, seed=3)
    # a saved dataset without a validation split is carved by the same function: the same images
    whole, _ = load(root, val_fraction=0)
    save_detection_dataset(whole, tmp_path / "saved")
    saved, _ = load(tmp_path / "saved", val_fraction=0.1)
    assert set(saved["validation"]["file_name"]) == set(grown["validation"]["file_name"])


# -- 6. EXIF orientation notes ---------------------------------------------------------------------------------------
def _exif_png(path: Path, orientation: int, size: tuple[int, int] = (60, 40)) -> Path:
    exif = PILImage.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", size).save(path, exif=exif)
    return path


def test_every_image_with_an_exif_orientation_gets_a_note(tmp_path, load):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    for name in ("stored", "shown", "nosize", "flipped", "plain"):
        _exif_png(root / "JPEGImages" / f"{name}.png", {"flipped": 3, "plain": 1}.get(name, 6))
    box = [("cat", (1, 1, 10, 10))]
    (root / "Annotations" / "stored.xml").write_text(voc_xml("stored.png", 60, 40, box), encoding="utf-8")
    (root / "Annotations" / "shown.xml").write_text(voc_xml("shown.png", 40, 60, box), encoding="utf-8")
    nosize = voc_xml("nosize.png", 40, 60, box).replace("<size><width>40</width><height>60</height>", "<size>")
    (root / "Annotations" / "nosize.xml").write_text(nosize, encoding="utf-8")
    (root / "Annotations" / "flipped.xml").write_text(voc_xml("flipped.png", 60, 40, box), encoding="utf-8")
    (root / "Annotations" / "plain.xml").write_text(voc_xml("plain.png", 60, 40, box), encoding="utf-8")
    _, report = load(root)
    assert [i.file for i in report.issues_of("exif_rotated")] == ["Annotations/stored.xml"]  # boxes moved: noted
    notes = {i.file: i.message for i in report.issues_of("exif_orientation")}
    assert sorted(notes) == ["Annotations/flipped.xml", "Annotations/nosize.xml", "Annotations/shown.xml"]
    assert "orientation 3" in notes["Annotations/flipped.xml"] and "assumed" in notes["Annotations/flipped.xml"]
    assert "assumed" in notes["Annotations/nosize.xml"] and "assumed" not in notes["Annotations/shown.xml"]
    assert report.num_fixes == 0


def test_exif_orientation_note_in_a_cast_dataset(tmp_path, load):
    path = _exif_png(tmp_path / "x.png", 6)
    features = Features({"image": Image(), "objects": {"bbox": List(List(Value("float32"), length=4)),
                                                      "category": List(Value("string"))}})  # fmt: skip
    rows = {"image": [{"bytes": path.read_bytes(), "path": "x.png"}], "objects": [{"bbox": [[1, 1, 5, 5]],
                                                                                  "category": ["cat"]}]}  # fmt: skip
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    ds, report = load(tmp_path / "saved")
    assert (ds["train"][0]["width"], ds["train"][0]["height"]) == (40, 60)
    assert report.count("exif_orientation") == 1


# -- 7. text files read with an explicit encoding --------------------------------------------------------------------
def test_class_list_file_with_a_byte_order_mark(tmp_path):
    voc = tmp_path / "voc"
    write_voc(voc)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8-sig")  # Notepad's UTF-8
    out = tmp_path / "out"
    args = ["convert", str(voc), "-o", str(out), "--val-fraction", "0", "--class-names", f"@{tmp_path / 'classes.txt'}"]
    assert cli.main([*args, "--cache-dir", str(tmp_path / "c")]) == 0
    report = ConversionReport.load(out)
    assert report.class_names == CLASSES and report.num_fixes == 0


def test_report_and_mapping_written_by_other_tools_load_under_an_ascii_locale(tmp_path):
    """categories.json / conversion_report.json in UTF-8 with non-ASCII names (as an editor saves them, BOM and
    all) must load the same whatever the locale's encoding."""
    names = ["B\u00e4r", "\u732b"]
    mapping = {"categories": [{"label": i, "name": n, "source_id": None, "supercategory": None} for i, n in
                              enumerate(names)]}  # fmt: skip
    (tmp_path / "categories.json").write_text(json.dumps(mapping, ensure_ascii=False), encoding="utf-8-sig")
    (tmp_path / "conversion_report.json").write_text(json.dumps({"class_names": names}, ensure_ascii=False),
                                                     encoding="utf-8")  # fmt: skip
    script = (  # the two modules alone: importing the package (torch, transformers) takes far longer
        "import importlib.util, sys\n"
        "def module(path):\n"
        "    spec = importlib.util.spec_from_file_location(path, path)\n"
        "    sys.modules[path] = m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m\n"
        f"schema, report = module({schema.__file__!r}), module({report_module.__file__!r})\n"
        f"names = {names!a}; d = sys.argv[1]\n"
        "assert schema.CategoryMapping.load(d).names == names, schema.CategoryMapping.load(d).names\n"
        "assert report.ConversionReport.load(d).class_names == names\n"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
