"""YOLO reader and exporter: labels matched within their split, non-finite numbers, Roboflow's unlisted test split,
orphan label files, Darknet lists written on another machine, crowd boxes and unsafe paths on export, encodings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import write_coco, write_image, write_yolo, yolo_line

from detr_hf.data import DatasetValidationError, class_names_of, export_yolo

A_LINE = yolo_line("dog", (4, 6, 30, 40), 64, 48)  # a box of a.jpg (64 x 48)


def boxes_by_file(dataset) -> dict[str, list[tuple[str, list[float]]]]:
    names = class_names_of(dataset)
    return {
        r["file_name"]: [(names[c], b) for c, b in zip(r["objects"]["category"], r["objects"]["bbox"])]
        for r in dataset.select_columns(["file_name", "objects"])
    }


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# -- matching labels to images -------------------------------------------------------------------------------------
def test_label_of_another_split_is_never_taken(tmp_path, load):
    """A train negative must not take the only label file of its stem when that file is in labels/val."""
    root = tmp_path / "ds"
    write(root / "classes.txt", "cat\ndog\nperson\n")
    write_image(root / "images" / "train" / "0001.jpg", 64, 48)  # a negative
    write_image(root / "images" / "val" / "0002.jpg", 64, 48, seed=1)
    write(root / "labels" / "val" / "0002.txt", A_LINE + "\n")
    write(root / "labels" / "val" / "0001.txt", A_LINE + "\n")  # its image is not here
    ds, report = load(root)
    assert boxes_by_file(ds["train"]) == {"images/train/0001.jpg": []}
    assert [c for c, _ in boxes_by_file(ds["validation"])["images/val/0002.jpg"]] == ["dog"]
    assert [(i.file, i.boxes_lost) for i in report.issues_of("label_without_image")] == [("labels/val/0001.txt", 1)]
    assert report.count("label_matched_by_stem") == 0 and report.boxes_read == 2 and report.num_boxes == 1


def test_label_claimed_by_two_images_is_read_once(tmp_path, load):
    root = tmp_path / "ds"
    write(root / "classes.txt", "cat\ndog\nperson\n")
    write_image(root / "x.jpg", 64, 48)
    write_image(root / "x.png", 64, 48, seed=1)
    write(root / "x.txt", A_LINE + "\n")
    ds, report = load(root)
    boxes = boxes_by_file(ds["train"])
    assert [c for c, _ in boxes["x.jpg"]] == ["dog"] and boxes["x.png"] == []
    (issue,) = report.issues_of("label_ambiguous")
    assert (issue.file, issue.boxes_lost) == ("x.txt", 1) and "x.png" in issue.message
    assert report.num_boxes == 1 and report.boxes_read == 2


def test_label_found_by_stem_only_in_the_same_split(tmp_path, load):
    """Images in their own folder, labels in the dataset folder: matched by stem within the split, and noted."""
    root, images = tmp_path / "labels_only", tmp_path / "pictures"
    write(root / "classes.txt", "cat\ndog\nperson\n")
    write(root / "labels" / "train" / "a.txt", A_LINE + "\n")
    write(root / "labels" / "train" / "b.txt", A_LINE + "\n")  # b.png is a validation image
    write_image(images / "train" / "a.jpg", 64, 48)
    write_image(images / "val" / "b.png", 64, 48, seed=1)
    ds, report = load(root, format="yolo", images_dir=images)
    assert [c for c, _ in boxes_by_file(ds["train"])["train/a.jpg"]] == ["dog"]
    assert boxes_by_file(ds["validation"]) == {"val/b.png": []}
    (note,) = report.issues_of("label_matched_by_stem")
    assert note.file == "labels/train/a.txt" and "train/a.jpg" in note.message
    assert [i.file for i in report.issues_of("label_without_image")] == ["labels/train/b.txt"]


# -- numbers -------------------------------------------------------------------------------------------------------
def test_non_finite_class_or_coordinate_is_malformed(tmp_path, load):
    root = tmp_path / "ds"
    write_yolo(root)
    bad = [
        "inf 0.5 0.5 0.1 0.1",
        "1e400 0.5 0.5 0.1 0.1",
        "nan 0.5 0.5 0.1 0.1",
        "0 nan 0.5 0.1 0.1",
        "0 0.5 0.5 inf 0.1",
    ]
    write(root / "a.txt", "\n".join([A_LINE, *bad]) + "\n")
    ds, report = load(root)
    assert [c for c, _ in boxes_by_file(ds["train"])["a.jpg"]] == ["dog"]
    issues = report.issues_of("malformed")
    assert [(i.file, i.record, i.boxes_lost) for i in issues] == [("a.txt", f"line {n}", 1) for n in range(2, 7)]
    assert "not a non-negative integer" in issues[0].message and "finite" in issues[3].message


# -- splits --------------------------------------------------------------------------------------------------------
def write_roboflow(root: Path) -> None:
    """Roboflow's export: train/, valid/ and test/ folders, a data.yaml naming only train and val."""
    write(root / "data.yaml", "train: ../train/images\nval: ../valid/images\nnc: 3\nnames: ['cat', 'dog', 'person']\n")
    write(root / "README.roboflow.txt", "Exported with Roboflow on 2 3 4 5 6\n")
    for split, name in (("train", "a.jpg"), ("valid", "b.jpg"), ("test", "c.jpg")):
        write_image(root / split / "images" / name, 64, 48)
        write(root / split / "labels" / f"{name[0]}.txt", A_LINE + "\n")
    write(root / "test" / "labels" / "d.txt", A_LINE + "\n" + A_LINE + "\n")
    write_image(root / "test" / "images" / "d.jpg", 64, 48, seed=3)


def test_roboflow_test_split_beside_the_listed_ones_is_read(tmp_path, load):
    root = tmp_path / "rf"
    write_roboflow(root)
    ds, report = load(root)
    assert list(ds) == ["train", "validation", "test"]
    assert sorted(ds["test"]["file_name"]) == ["test/images/c.jpg", "test/images/d.jpg"]
    assert report.splits["test"].boxes == 3 and report.num_boxes == 5
    assert report.issues == [] and any("test/images" in n and "extra_splits" in n for n in report.notes)


def test_unlisted_split_left_out_is_reported_once(tmp_path, load):
    root = tmp_path / "rf"
    write_roboflow(root)
    ds, report = load(root, extra_splits=False)
    assert list(ds) == ["train", "validation"]
    assert report.count("label_without_image") == 0
    (skipped,) = report.issues_of("split_skipped")
    assert skipped.file == "test/images" and skipped.boxes_lost == 3
    assert "2 images" in skipped.message and report.boxes_read == 5


def test_orphan_label_files_are_all_counted(tmp_path, load):
    """Orphans whose first line does not parse still count, and an existing image is never called missing."""
    root = tmp_path / "ds"
    write(root / "data.yaml", "train: train.txt\nnames: ['cat', 'dog', 'person']\n")
    write(root / "train.txt", "images/train/a.jpg\n")
    write_image(root / "images" / "train" / "a.jpg", 64, 48)
    write_image(root / "images" / "train" / "b.jpg", 64, 48, seed=1)  # not in train.txt
    write(root / "labels" / "train" / "a.txt", A_LINE + "\n")
    write(root / "labels" / "train" / "b.txt", A_LINE + "\n")
    write(root / "labels" / "train" / "ghost.txt", "0 0.5 oops 0.2 0.2\n" + A_LINE + "\n")
    write(root / "labels" / "train" / "junk.txt", "no boxes here\n")
    write(root / "stray.txt", "# written by some tool\n" + A_LINE + "\n")  # not under labels/, but holds a box
    write(root / "notes.txt", "nothing to see\n")  # no box line: not a label file
    ds, report = load(root)
    assert list(ds["train"]["file_name"]) == ["images/train/a.jpg"]
    orphans = {i.file: i for i in report.issues_of("label_without_image")}
    lost = {name: issue.boxes_lost for name, issue in orphans.items()}
    assert lost == {"labels/train/b.txt": 1, "labels/train/ghost.txt": 2, "labels/train/junk.txt": 1, "stray.txt": 2}
    assert "images/train/b.jpg" in orphans["labels/train/b.txt"].message
    assert "no image" not in orphans["labels/train/b.txt"].message
    assert report.boxes_read == 1 + 6


def test_darknet_list_written_on_another_machine(tmp_path, load):
    """train.txt names /content/darknet/data/obj/...: the images are found by their path tail under the folder.
    Darknet's VOC layout keeps the label of JPEGImages/x.jpg in labels/x.txt."""
    root = tmp_path / "darknet"
    write(root / "obj.data", "classes = 3\ntrain = data/train.txt\nnames = data/obj.names\nbackup = backup/\n")
    write(root / "obj.names", "cat\ndog\nperson\n")
    voc = "/content/darknet/VOCdevkit/VOC2007/JPEGImages/000001.jpg"
    write(root / "train.txt", f"/content/darknet/data/obj/img1.jpg\n/content/darknet/data/obj/img2.jpg\n{voc}\n")
    for k in (1, 2):
        write_image(root / "data" / "obj" / f"img{k}.jpg", 64, 48, seed=k)
    write(root / "data" / "obj" / "img1.txt", A_LINE + "\n")
    write_image(root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.jpg", 64, 48, seed=3)
    write(root / "VOCdevkit" / "VOC2007" / "labels" / "000001.txt", A_LINE + "\n")
    ds, report = load(root)
    boxes = {name: [c for c, _ in b] for name, b in boxes_by_file(ds["train"]).items()}
    voc_name = "VOCdevkit/VOC2007/JPEGImages/000001.jpg"
    assert boxes == {"data/obj/img1.jpg": ["dog"], "data/obj/img2.jpg": [], voc_name: ["dog"]}
    assert report.count("missing_image") == 0 and report.count("label_without_image") == 0
    assert report.count("path_relocated") >= 1 and report.num_fixes == 0
    assert report.count("label_matched_by_stem") == 0


# -- encodings -----------------------------------------------------------------------------------------------------
def test_text_files_are_read_as_utf8(tmp_path, load):
    root = tmp_path / "ds"
    write_yolo(root)
    write(root / "a.txt", b"\xef\xbb\xbf" + A_LINE.encode() + b"\n")  # a BOM (Windows Notepad)
    ds, report = load(root)
    assert [c for c, _ in boxes_by_file(ds["train"])["a.jpg"]] == ["dog"] and report.num_fixes == 0

    write(root / "a.txt", A_LINE.encode() + b"\n0 0.5 0.5 0.1 0.1 \xe9\n")  # Latin-1 on line 2
    with pytest.raises(DatasetValidationError, match=r"a\.txt: line 2: not UTF-8"):
        load(root)

    write(root / "a.txt", A_LINE + "\n")
    write(root / "classes.txt", "caf\xe9\ndog\nperson\n".encode("cp1252"))
    with pytest.raises(DatasetValidationError, match=r"classes\.txt: line 1: not UTF-8"):
        load(root)

    config = tmp_path / "with_yaml"
    write_image(config / "images" / "train" / "a.jpg", 64, 48)
    write(config / "labels" / "train" / "a.txt", A_LINE + "\n")
    write(config / "data.yaml", "train: images/train\nnames:\n  0: cat\n  1: dog\n  2: caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetValidationError, match=r"data\.yaml: line 5: not UTF-8"):
        load(config, format="yolo")


# -- export --------------------------------------------------------------------------------------------------------
def test_export_crowd_policy(tmp_path, load):
    root = tmp_path / "coco"
    coco = write_coco(root)
    coco["annotations"][0]["iscrowd"] = 1  # a.jpg's dog
    (root / "annotations.json").write_text(json.dumps(coco))
    train = load(root)[0]["train"]
    with pytest.raises(DatasetValidationError, match="crowd"):
        export_yolo(train, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    export_yolo(train, tmp_path / "dropped", crowd="drop")
    export_yolo(train, tmp_path / "kept", crowd="as_object")
    dropped = (tmp_path / "dropped" / "labels" / "train" / "a.txt").read_text().splitlines()
    kept = (tmp_path / "kept" / "labels" / "train" / "a.txt").read_text().splitlines()
    assert [line.split()[0] for line in dropped] == ["0"]  # the cat only
    assert [line.split()[0] for line in kept] == ["1", "0"]
    back = boxes_by_file(load(tmp_path / "kept")[0]["train"])
    assert [c for c, _ in back["images/train/a.jpg"]] == ["dog", "cat"]


@pytest.mark.parametrize("bad", ["../../../x.png", "ABSOLUTE"])
def test_export_refuses_paths_outside_the_output_folder(tmp_path, load, bad):
    root = tmp_path / "coco"
    write_coco(root)
    train = load(root)[0]["train"]
    bad = str(tmp_path / "outside" / "x.png") if bad == "ABSOLUTE" else bad
    renamed = train.map(lambda r, i: {"file_name": bad if i == 0 else r["file_name"]}, with_indices=True)
    out = tmp_path / "out" / "yolo"
    with pytest.raises(DatasetValidationError, match=r"x\.png"):
        export_yolo(renamed, out)
    assert not (tmp_path / "outside").exists()
    assert [p for p in tmp_path.rglob("x.*") if p.suffix in (".txt", ".png")] == []


def test_export_refuses_images_sharing_a_label_file(tmp_path, load):
    root = tmp_path / "coco"
    write_coco(root)
    train = load(root)[0]["train"]
    names = {"a.jpg": "a.jpg", "b.png": "a.png", "c.jpg": "c.jpg"}
    renamed = train.map(lambda r: {"file_name": names[r["file_name"]]})
    with pytest.raises(DatasetValidationError, match=r"labels/train/a\.txt"):
        export_yolo(renamed, tmp_path / "out")


def test_data_yaml_pointing_outside_the_dataset_is_refused(tmp_path, load):
    """A data.yaml split folder outside the dataset folder is not walked (images would leak into the dataset)."""
    outside = tmp_path / "elsewhere" / "images"
    write_image(outside / "secret.jpg", 64, 48)
    root = tmp_path / "ds"
    write(root / "data.yaml", f"train: {outside}\nnames: [cat, dog, person]\n")
    with pytest.raises(DatasetValidationError, match="outside the dataset folder"):
        load(root, format="yolo")
    ds = load(root, format="yolo", image_roots=[tmp_path / "elsewhere"])[0]
    assert list(ds["train"]["file_name"]) == ["images/secret.jpg"]
