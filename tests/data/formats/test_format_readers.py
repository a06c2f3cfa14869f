"""Format readers and exporters on the inputs real tools write: LabelMe groups and ignore regions, crowd regions and
hostile file names on export, CSV encodings, COCO files of the wrong shape, CVAT/Datumaro VOC corners, MIT LabelMe
XML."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from data_fixtures import CLASSES, voc_xml, write_coco, write_image, write_images
from datasets import Dataset

from detr_hf.data import (
    ConversionReport,
    DatasetValidationError,
    class_names_of,
    detection_features,
    export_coco,
    export_csv,
    export_voc,
)
from detr_hf.data.formats import READERS, coco, detect_format
from detr_hf.data.formats.base import ReadContext


def read_source(root: Path, fmt: str, **options):
    """Run a reader alone: its images (consumed), its categories and the report."""
    report = ConversionReport()
    data = READERS[fmt](ReadContext(root, root, report), **options)
    images = list(data.images)
    return images, data.categories, report


def boxes_by_file(ds) -> dict[str, list[tuple[str, list[float]]]]:
    names = class_names_of(ds)
    return {
        r["file_name"]: [(names[c], b) for c, b in zip(r["objects"]["category"], r["objects"]["bbox"])]
        for r in ds.select_columns(["file_name", "objects"])
    }


# -- LabelMe: group_id and __ignore__ ------------------------------------------------------------------------------
def polygon(label: str, points, group_id=None) -> dict:
    return {"label": label, "points": points, "group_id": group_id, "shape_type": "polygon", "flags": {}}


def write_labelme_sofa(root: Path) -> None:
    """LabelMe's instance-segmentation example in small: a sofa cut in four by a person, and an ignored region."""
    write_image(root / "room.jpg", 100, 80)
    shapes = [
        polygon("sofa", [[10, 40], [20, 40], [15, 60]], group_id=1),
        polygon("person", [[30, 10], [50, 10], [40, 70]]),
        polygon("sofa", [[60, 45], [70, 42], [65, 58]], group_id=1),
        polygon("sofa", [[22, 50], [28, 50], [25, 66]], group_id=1),
        polygon("sofa", [[52, 55], [58, 55], [55, 75]], group_id=1),
        polygon("__ignore__", [[80, 5], [95, 5], [90, 20]]),
        polygon("person", [[85, 30], [95, 30], [90, 50]], group_id=1),  # same group_id, other label: its own object
        polygon("person", [[5, 5], [8, 5], [6, 9]]),  # no group_id: never merged with the other person
    ]
    data = {"version": "5.2.1", "shapes": shapes, "imagePath": "room.jpg", "imageHeight": 80, "imageWidth": 100}
    (root / "room.json").write_text(json.dumps(data), encoding="utf-8")


def test_labelme_shapes_sharing_a_group_id_are_one_box(tmp_path):
    write_labelme_sofa(tmp_path)
    [image], categories, report = read_source(tmp_path, "labelme")
    objects = [(o.name, o.box, o.record, o.iscrowd) for o in image.objects]
    assert objects == [
        ("sofa", (10.0, 40.0, 70.0, 75.0), "shapes 1, 3, 4, 5", 0),
        ("person", (30.0, 10.0, 50.0, 70.0), "shape 2", 0),
        ("__ignore__", (80.0, 5.0, 95.0, 20.0), "shape 6", 1),
        ("person", (85.0, 30.0, 95.0, 50.0), "shape 7", 0),
        ("person", (5.0, 5.0, 8.0, 9.0), "shape 8", 0),
    ]
    [merged] = report.issues_of("shapes_merged")
    assert (merged.file, merged.record) == ("room.json", "shapes 1, 3, 4, 5") and not merged.is_fix
    [ignored] = report.issues_of("ignore_region")
    assert (ignored.file, ignored.record) == ("room.json", "shape 6") and not ignored.is_fix
    assert [c.name for c in categories] == ["person", "sofa"]
    assert report.count("shape_to_box") == 8 and report.num_fixes == 0


def test_labelme_ignore_is_never_a_class(tmp_path, load):
    write_labelme_sofa(tmp_path)
    ds, report = load(tmp_path)
    assert class_names_of(ds["train"]) == ["person", "sofa"]
    objects = ds["train"][0]["objects"]
    names = class_names_of(ds["train"])
    boxes = [(names[c], b) for c, b, z in zip(objects["category"], objects["bbox"], objects["iscrowd"]) if not z]
    assert [b for c, b in boxes if c == "sofa"] == [[10, 40, 60, 35]]  # one box: the union of the four pieces
    assert sorted(b for c, b in boxes if c == "person") == [[5, 5, 3, 4], [30, 10, 20, 60], [85, 30, 10, 20]]
    assert report.count("shapes_merged") == 1 and report.count("ignore_region") == 1
    crowd = [(c, b) for c, b, z in zip(objects["category"], objects["bbox"], objects["iscrowd"]) if z]
    # the __ignore__ region is an ignore region for every class, so COCO evaluation ignores detections of any class
    assert crowd == [(0, [80, 5, 15, 15]), (1, [80, 5, 15, 15])]
    assert report.count("unknown_class") == 0 and report.boxes_lost == 0


def test_labelme_file_that_is_not_an_object_is_reported(tmp_path, load):
    write_labelme_sofa(tmp_path)
    (tmp_path / "list.json").write_text('[{"shapes": []}]', encoding="utf-8")
    (tmp_path / "bad_shapes.json").write_text('{"shapes": {"a": 1}, "imagePath": "room.jpg"}', encoding="utf-8")
    images, _, report = read_source(tmp_path, "labelme")
    assert [i.file_name for i in images] == ["room.jpg"]
    assert sorted((i.file, i.record) for i in report.issues_of("malformed")) == [
        ("bad_shapes.json", "shapes"),
        ("list.json", ""),
    ]


# -- exports: crowd regions and file names -------------------------------------------------------------------------
def tiny_dataset(tmp_path: Path, file_names: list[str], crowd: bool = True) -> Dataset:
    """Records pointing at one 40x30 image, each with a cat box and a dog box (the dog a crowd region)."""
    image = write_image(tmp_path / "source" / "img.png", 40, 30)
    rows = {"image_id": [], "image": [], "width": [], "height": [], "file_name": [], "objects": []}
    for k, name in enumerate(file_names):
        rows["image_id"].append(k + 1)
        rows["image"].append(str(image))
        rows["width"].append(40)
        rows["height"].append(30)
        rows["file_name"].append(name)
        rows["objects"].append(
            {
                "id": [2 * k + 1, 2 * k + 2],
                "area": [50.0, 40.0],
                "bbox": [[1, 2, 10, 5], [20, 10, 8, 5]],
                "category": [0, 1],
                "iscrowd": [0, int(crowd)],
                "difficult": [0, 0],
                "truncated": [0, 0],
            }
        )
    return Dataset.from_dict(rows, features=detection_features(CLASSES))


def voc_objects(xml_path: Path) -> list[tuple[str, list[str]]]:
    root = ET.parse(xml_path).getroot()
    return [
        (o.findtext("name"), [o.findtext(f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")])
        for o in root.findall("object")
    ]


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


def test_voc_and_csv_exports_refuse_crowd_regions_by_default(tmp_path):
    ds = tiny_dataset(tmp_path, ["a.png", "b.png"])
    with pytest.raises(DatasetValidationError, match=r"2 crowd .* in 2 image.*first: a\.png"):
        export_voc(ds, tmp_path / "voc")
    with pytest.raises(DatasetValidationError, match=r"2 crowd .* in 2 image.*first: a\.png"):
        export_csv(ds, tmp_path / "csv" / "labels.csv")
    assert not (tmp_path / "voc" / "Annotations").exists() and not (tmp_path / "csv").exists()


@pytest.mark.parametrize("crowd", ["drop", "as_object"])
def test_voc_and_csv_exports_drop_or_flatten_crowd_regions_on_request(crowd, tmp_path, caplog):
    ds = tiny_dataset(tmp_path, ["a.png"])
    caplog.set_level("WARNING")
    export_voc(ds, tmp_path / "voc", crowd=crowd)
    export_csv(ds, tmp_path / "labels.csv", crowd=crowd)
    cat = ("cat", ["2", "3", "11", "7"])  # 1-based VOC corners of [1, 2, 10, 5]
    dog = ("dog", ["21", "11", "28", "15"])
    assert voc_objects(tmp_path / "voc" / "Annotations" / "a.xml") == ([cat] if crowd == "drop" else [cat, dog])
    expected_csv = [["a.png", "40", "30", "cat", "1", "2", "11", "7"]]
    if crowd == "as_object":
        expected_csv.append(["a.png", "40", "30", "dog", "20", "10", "28", "15"])
    assert csv_rows(tmp_path / "labels.csv") == expected_csv
    logged = [r.getMessage() for r in caplog.records]
    assert len([m for m in logged if "1 crowd region(s) in 1 image(s)" in m]) == 2


def test_crowd_only_image_is_exported_as_a_negative_when_dropped(tmp_path):
    ds = tiny_dataset(tmp_path, ["a.png"]).map(
        lambda r: {"objects": {**r["objects"], "iscrowd": [1, 1]}}, features=detection_features(CLASSES)
    )
    export_csv(ds, tmp_path / "labels.csv", crowd="drop")
    assert csv_rows(tmp_path / "labels.csv") == [["a.png", "40", "30", "", "", "", "", ""]]


def test_coco_export_keeps_crowd_regions_marked(tmp_path):
    exported = export_coco(tiny_dataset(tmp_path, ["a.png"]), tmp_path / "coco.json")
    assert [(a["category_id"], a["iscrowd"]) for a in exported["annotations"]] == [(0, 0), (1, 1)]
    written = json.loads((tmp_path / "coco.json").read_text(encoding="utf-8"))
    assert [a["iscrowd"] for a in written["annotations"]] == [0, 1]


@pytest.mark.parametrize("hostile", ["../../escaped.png", "ABSOLUTE", "..\\escaped.png", "sub/../../escaped.png"])
def test_exports_refuse_file_names_leaving_the_output_folder(hostile, tmp_path):
    outside = tmp_path / "work"
    output = outside / "out"
    name = str(outside / "escaped.png") if hostile == "ABSOLUTE" else hostile
    ds = tiny_dataset(tmp_path, ["fine.png", name], crowd=False)
    with pytest.raises(DatasetValidationError, match="record 1"):
        export_voc(ds, output / "voc")
    with pytest.raises(DatasetValidationError, match="record 1"):
        export_csv(ds, output / "csv" / "labels.csv")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["source/img.png"]  # nothing at all: the names are checked before anything is written


# -- CSV encodings -------------------------------------------------------------------------------------------------
def test_csv_that_is_not_utf8_raises_naming_the_line(tmp_path, load):
    write_images(tmp_path)
    text = "filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,1,1,5,5\nb.png,café,1,1,5,5\n"
    (tmp_path / "labels.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(DatasetValidationError, match=r"labels\.csv: line 3: byte 0xe9 .*not UTF-8"):
        load(tmp_path)


def test_excel_csv_utf8_with_bom_is_detected_and_read(tmp_path, load):
    write_images(tmp_path)
    text = "filename,class,xmin,ymin,xmax,ymax\na.jpg,café,1,1,5,5\nb.png,cafe,2,2,6,6\n"
    (tmp_path / "labels.csv").write_bytes(text.encode("utf-8-sig"))
    assert detect_format(tmp_path) == "csv"
    ds, report = load(tmp_path)
    assert class_names_of(ds["train"]) == ["cafe", "café"]  # two classes, not one "caf\ufffd"
    assert boxes_by_file(ds["train"])["a.jpg"] == [("café", [1, 1, 4, 4])]
    assert report.num_fixes == 0


def test_open_images_csv_that_is_not_utf8_raises_naming_the_line(tmp_path, load):
    write_images(tmp_path)
    lines = ["ImageID,LabelName,XMin,XMax,YMin,YMax", "a.jpg,/m/01,0.1,0.5,0.1,0.5", "b.png,/m/02,0.1,0.5,0.1,0.5"]
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "class-descriptions.csv").write_bytes("/m/01,cat\n/m/02,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetValidationError, match=r"class-descriptions\.csv: line 2: byte 0xe9"):
        load(tmp_path, format="openimages")


# -- COCO files of the wrong shape ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda coco: [coco], r"annotations\.json: the top level is a JSON list"),
        (lambda coco: "just text", r"annotations\.json: the top level is a JSON string"),
        (lambda coco: {**coco, "images": {"1": coco["images"][0]}}, r"annotations\.json: 'images' must be a JSON list"),
        (lambda coco: {**coco, "annotations": "none"}, r"annotations\.json: 'annotations' must be a JSON list"),
        (lambda coco: {**coco, "categories": 7}, r"annotations\.json: 'categories' must be a JSON list"),
        (lambda coco: {**coco, "categories": []}, r"annotations\.json: 3 annotations but no 'categories'"),
        (lambda coco: {k: v for k, v in coco.items() if k != "categories"}, r"annotations\.json: 3 annotations but"),
    ],
)
def test_coco_file_of_the_wrong_shape_raises_naming_the_file(change, message, tmp_path, load):
    coco = write_coco(tmp_path)
    (tmp_path / "annotations.json").write_text(json.dumps(change(coco)), encoding="utf-8")
    with pytest.raises(DatasetValidationError, match=message):
        load(tmp_path / "annotations.json", format="coco")


def test_coco_records_that_are_not_objects_are_malformed(tmp_path, load):
    coco = write_coco(tmp_path)
    coco["images"].insert(1, "b.png")
    coco["annotations"].insert(0, [1, 2, 3])
    (tmp_path / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
    ds, report = load(tmp_path)
    assert sorted((i.file, i.record, i.boxes_lost) for i in report.issues_of("malformed")) == [
        ("annotations.json", "annotations[0]", 1),
        ("annotations.json", "images[1]", 0),
    ]
    assert ds["train"].num_rows == 3 and report.num_boxes == 3


def test_coco_detection_survives_json_that_is_not_an_object(tmp_path):
    write_coco(tmp_path)
    padded = ["x" * (1 << 17), {"images": [], "annotations": []}]  # keys past the first 64 KiB: the file is parsed
    (tmp_path / "list.json").write_text(json.dumps(padded), encoding="utf-8")
    (tmp_path / "number.json").write_text("12", encoding="utf-8")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert [p.name for p in coco.find_files(tmp_path)] == ["annotations.json"]
    assert detect_format(tmp_path) == "coco"


# -- VOC from CVAT and Datumaro ------------------------------------------------------------------------------------
def write_datumaro_voc(root: Path) -> None:
    """A CVAT "PASCAL VOC 1.1" export in small: labelmap.txt, and box corners written as CVAT holds them."""
    write_images(root / "JPEGImages")
    (root / "Annotations").mkdir(parents=True)
    xml = voc_xml("a.jpg", 64, 48, [("dog", (4, 6, 30, 40))], one_based=False).replace(
        "<xmin>4</xmin>", "<xmin>4.0</xmin>"
    )
    (root / "Annotations" / "a.xml").write_text(xml, encoding="utf-8")
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ndog:1,1,1::\n")


def test_cvat_and_datumaro_voc_corners_are_read_as_written(tmp_path, load):
    write_datumaro_voc(tmp_path)
    ds, report = load(tmp_path)
    assert boxes_by_file(ds["train"])["JPEGImages/a.jpg"] == [("dog", [4, 6, 26, 34])]  # as CVAT's COCO export gives
    assert any("labelmap.txt" in n and "0-based" in n for n in report.notes)
    ds, _ = load(tmp_path, one_based=True)  # the override still counts from 1
    assert boxes_by_file(ds["train"])["JPEGImages/a.jpg"] == [("dog", [3, 5, 27, 35])]
    (tmp_path / "labelmap.txt").unlink()  # without the export's labelmap: Pascal VOC's own 1-based corners
    ds, report = load(tmp_path)
    assert boxes_by_file(ds["train"])["JPEGImages/a.jpg"] == [("dog", [3, 5, 27, 35])]
    assert not any("labelmap.txt" in n for n in report.notes)


# -- MIT LabelMe 3.0 XML -------------------------------------------------------------------------------------------
def labelme_object(name: str, points, deleted: int = 0, box: bool = False) -> str:
    pts = "".join(f"<pt><x>{x}</x><y>{y}</y></pt>" for x, y in points)
    kind = "<type>bounding_box</type>" if box else ""
    return (
        f"<object><name>{name}</name><deleted>{deleted}</deleted><verified>0</verified><occluded>no</occluded>"
        f"<attributes></attributes><parts><hasparts></hasparts><ispartof></ispartof></parts><date></date><id>0</id>"
        f"{kind}<polygon><username>anonymous</username>{pts}</polygon></object>"
    )


def write_mit_labelme(root: Path) -> None:
    write_images(root / "Images" / "static_room")
    objects = {
        "a": [
            labelme_object("dog", [(4, 6), (30, 6), (30, 40), (4, 40)], box=True),
            labelme_object("cat", [(32, 8), (60, 20), (40, 44)]),
            labelme_object("cat", [(1, 1), (9, 1), (5, 9)], deleted=1),
        ],
        "b": [labelme_object("person", [(0, 0), (40, 0), (40, 60), (0, 60)], box=True)],
        "c": [],
    }
    sizes = {"a": (64, 48, "jpg"), "b": (40, 60, "png"), "c": (50, 50, "jpg")}
    (root / "Annotations" / "static_room").mkdir(parents=True)
    for stem, objs in objects.items():
        w, h, ext = sizes[stem]
        xml = (
            f"<annotation><filename>{stem}.{ext}</filename><folder>static_room</folder>"
            "<source><sourceImage></sourceImage><sourceAnnotation>LabelMe Webtool</sourceAnnotation></source>"
            f"{''.join(objs)}<imagesize><nrows>{h}</nrows><ncols>{w}</ncols></imagesize></annotation>"
        )
        (root / "Annotations" / "static_room" / f"{stem}.xml").write_text(xml, encoding="utf-8")


def test_mit_labelme_xml_is_detected_and_read(tmp_path, load):
    write_mit_labelme(tmp_path)
    assert detect_format(tmp_path) == "labelme_xml"
    ds, report = load(tmp_path)
    assert class_names_of(ds["train"]) == ["cat", "dog", "person"]
    assert boxes_by_file(ds["train"]) == {
        "Images/static_room/a.jpg": [("dog", [4, 6, 26, 34]), ("cat", [32, 8, 28, 36])],
        "Images/static_room/b.png": [("person", [0, 0, 40, 60])],
        "Images/static_room/c.jpg": [],
    }
    [polygon_note] = report.issues_of("shape_to_box")
    assert (polygon_note.file, polygon_note.record) == ("Annotations/static_room/a.xml", "object 2")
    assert any("1 object(s) marked <deleted>1</deleted>" in n and "a.xml: object 3" in n for n in report.notes)
    assert report.num_fixes == 0 and report.boxes_read == 3


def test_mit_labelme_xml_is_not_read_as_voc(tmp_path, load):
    write_mit_labelme(tmp_path)
    with pytest.raises(DatasetValidationError, match=r"MIT LabelMe XML.*format='labelme_xml'"):
        load(tmp_path, format="voc")


# -- COCO: one per-annotation check, shared with the evaluation's ground-truth validator -----------------------------
@pytest.mark.parametrize(
    "ann,kind,reason",
    [
        ({"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}, None, None),
        ({"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 1, 3, 6]]}, None, None),
        ({"id": 3, "image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4]}, "orphan_annotation",
         "image id 9 is not in 'images'"),
        ({"id": 4, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4]}, "unknown_class",
         "category id 7 is not in 'categories'"),
        ({"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}, "malformed",
         "unreadable annotation: bbox must be [x, y, w, h], got [1, 2, 3]"),
        ({"id": 6, "image_id": 1, "category_id": 1}, "malformed",
         "unreadable annotation: no bbox, and no polygon to take one from"),
        ({"id": 7, "image_id": "one", "category_id": 1, "bbox": [1, 2, 3, 4]}, "malformed", "unreadable annotation"),
        ([1, 2, 3, 4], "malformed", "a JSON list, not an annotation object"),
    ],
)  # fmt: skip
def test_coco_annotation_problem_is_the_readers_reason(tmp_path, ann, kind, reason):
    """``coco.annotation_problem`` says what the reader reports for the same annotation, in the same words."""
    problem = coco.annotation_problem(ann, {1}, {1})
    assert (problem is None) == (reason is None)
    if reason is not None:
        assert problem.startswith(reason)
    write_image(tmp_path / "a.png", 20, 20)
    truth = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}], "annotations": [ann],
             "categories": [{"id": 1, "name": "thing"}]}  # fmt: skip
    (tmp_path / "instances_train.json").write_text(json.dumps(truth), encoding="utf-8")
    images, _, report = read_source(tmp_path, "coco")
    lost = [i for i in report.issues if i.boxes_lost]
    if kind is None:
        assert len(images[0].objects) == 1 and not lost
    else:
        assert not images[0].objects and [(i.kind, i.message) for i in lost] == [(kind, problem)]


# -- the format registry ---------------------------------------------------------------------------------------------
def test_every_registered_format_module_keeps_the_contract():
    """A format is one module in ``FORMAT_MODULES``: names, aliases, readers and detection all come from it."""
    from detr_hf.data import formats

    assert set(formats.READERS) == {m.NAME for m in formats.FORMAT_MODULES}
    assert (*formats.READERS, "saved", "hub") == formats.FORMATS
    for module in formats.FORMAT_MODULES:
        assert formats.READERS[module.NAME] is module.read is formats.reader_of(module.NAME)
        assert callable(module.find_files) and isinstance(module.ALIASES, tuple)
        for alias in module.ALIASES:
            assert formats.canonical_format(alias.upper().replace("_", "-")) == module.NAME
    assert formats.canonical_format("disk") == "saved"
    with pytest.raises(ValueError, match="not an annotation format"):
        formats.reader_of("hub")


def test_registering_a_module_that_breaks_the_contract_fails_at_once():
    import types

    from detr_hf.data import formats

    incomplete = types.ModuleType("my_format")
    incomplete.NAME, incomplete.ALIASES = "mine", ()
    incomplete.find_files = lambda root: []
    with pytest.raises(TypeError, match=r"my_format does not define \['read'\]"):
        formats._registered((*formats.FORMAT_MODULES, incomplete))
    with pytest.raises(TypeError, match="'coco' is registered twice"):
        formats._registered((*formats.FORMAT_MODULES, coco))


def test_detection_asks_every_registered_format(tmp_path, monkeypatch):
    """``detect_format`` loops over the registry: a registered format's ``find_files`` is all detection needs."""
    import types

    from detr_hf.data import formats

    (tmp_path / "boxes.mine").write_text("thing 1 2 3 4\n", encoding="utf-8")
    mine = types.ModuleType("mine")
    mine.NAME, mine.ALIASES = "mine", ()
    mine.find_files = lambda root: sorted(root.glob("*.mine"))
    mine.read = lambda ctx: None
    monkeypatch.setattr(formats, "REGISTRY", formats._registered((*formats.FORMAT_MODULES, mine)))
    assert detect_format(tmp_path) == "mine"
    write_coco(tmp_path)
    with pytest.raises(DatasetValidationError, match=r"several formats: coco \(1 file\), mine \(1 file\)"):
        detect_format(tmp_path)


def test_export_dataset_dispatches_to_the_formats_exporter(tmp_path):
    from detr_hf.data import export_dataset

    ds = Dataset.from_dict(
        {"image_id": [1], "image": [None], "width": [20], "height": [10], "file_name": ["a.png"],
         "objects": [{"id": [1], "area": [8.0], "bbox": [[1.0, 2.0, 4.0, 2.0]], "category": [0], "iscrowd": [0],
                      "difficult": [0], "truncated": [0]}]},
        features=detection_features(["thing"]),
    )  # fmt: skip
    written = export_dataset(ds, "coco-json", tmp_path / "out.json")
    assert written == export_coco(ds) and json.loads((tmp_path / "out.json").read_text(encoding="utf-8")) == written
    with pytest.raises(ValueError, match="cannot export to 'cvat'; formats with an exporter: coco, voc, yolo, csv"):
        export_dataset(ds, "cvat", tmp_path)
