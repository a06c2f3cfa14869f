"""Hypothesis strategies for the annotation-format property tests: small valid datasets, the files each format's
tool writes for them (by hand, not by detr_hf's exporters), and one corruption of those files at a time.

A generated dataset is the truth: each reader must give it back exactly (within the format's precision). A
corruption says what outcome it allows: ``noticed`` (an error naming the file, or a fix in the report), ``no_silent_change``
(also: the same dataset, e.g. a broken byte in a field the reader ignores) or ``any`` (the corrupted file is another
valid file, e.g. a label file cut at a line break, which no reader can tell from the original).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml
from hypothesis import strategies as st
from PIL import Image

Draw = Callable[..., object]
# (basename, width, height, ((class, x0, y0, x1, y1, iscrowd, difficult), ...)), the form every comparison uses
Row = tuple[str, int, int, tuple[tuple, ...]]

ATOL = 1e-4  # pixels: YOLO's 6 decimals of a fraction of a 64-pixel image are 6.4e-5 px; float32 storage 4e-6 px
OUTSIDE = "outside.png"  # an image beside and above the dataset folder, which a hostile path may point to

# -- datasets --------------------------------------------------------------------------------------------------------
_NAME_CHARS = "abcxyzKLMéßüø中文_-0123456789"
_WORD = st.text(alphabet=_NAME_CHARS, min_size=1, max_size=6)
# "a b": inner spaces are fine everywhere; a name never starts or ends with one (every reader strips)
CLASS_NAMES = st.one_of(_WORD, st.builds(lambda a, b: f"{a} {b}", _WORD, _WORD))
# file names a folder may well hold, some of which are also the names of a format's own files
TRICKY_STEMS = ("train", "val", "test", "classes", "readme", "data", "images", "labels", "obj")
PLAIN_STEMS = st.one_of(_WORD.filter(lambda s: s[0] not in "-_"), CLASS_NAMES)
STEMS = st.one_of(st.sampled_from(TRICKY_STEMS), PLAIN_STEMS)


@dataclass(frozen=True)
class GenBox:
    name: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class GenImage:
    file_name: str
    width: int
    height: int
    boxes: tuple[GenBox, ...]


@dataclass(frozen=True)
class GenDataset:
    classes: tuple[str, ...]
    images: tuple[GenImage, ...]

    def used_classes(self) -> list[str]:
        return sorted({b.name for im in self.images for b in im.boxes})


def _span(size: int, integer: bool) -> st.SearchStrategy[tuple[float, float]]:
    """(low, high) inside [0, size]: integers at least 1 apart, or floats at least half a pixel apart."""
    if integer:
        pair = st.tuples(st.integers(0, size), st.integers(0, size)).filter(lambda t: t[0] != t[1])
    else:
        bound = st.floats(0, size, allow_nan=False, allow_infinity=False)
        pair = st.tuples(bound, bound).filter(lambda t: abs(t[0] - t[1]) >= 0.5)
    return pair.map(lambda t: (min(t), max(t)))


@st.composite
def gen_images(draw: Draw, stem: str, classes: tuple[str, ...], integer: bool) -> GenImage:
    width, height = draw(st.integers(8, 64)), draw(st.integers(8, 64))
    boxes = []
    for _ in range(draw(st.integers(0, 5))):
        (x0, x1), (y0, y1) = draw(_span(width, integer)), draw(_span(height, integer))
        boxes.append(GenBox(draw(st.sampled_from(classes)), x0, y0, x1, y1))
    return GenImage(f"{stem}.png", width, height, tuple(boxes))


@st.composite
def gen_datasets(draw: Draw, min_images: int = 1, min_boxes: int = 1, stems: st.SearchStrategy = STEMS) -> GenDataset:
    """1-4 classes, 1-6 images of 8-64 pixels with 0-5 boxes each (at least ``min_boxes`` in all: a format that
    names classes only on boxes needs one), integer or float corners."""
    classes = tuple(draw(st.lists(CLASS_NAMES, min_size=1, max_size=4, unique=True)))
    stems = draw(st.lists(stems, min_size=min_images, max_size=6, unique=True))
    integer = draw(st.booleans())
    images = tuple(draw(gen_images(stem, classes, integer)) for stem in stems)
    if sum(len(im.boxes) for im in images) < min_boxes:
        first = images[0]
        extra = GenBox(classes[0], 0, 0, first.width, first.height)
        images = (GenImage(first.file_name, first.width, first.height, (*first.boxes, extra)), *images[1:])
    return GenDataset(classes, images)


def truth_rows(gen: GenDataset, listed_only: bool = False) -> list[Row]:
    """The rows a reader must give (``listed_only``: images without boxes left out, as Open Images lists boxes)."""
    rows = [
        (im.file_name, im.width, im.height, tuple((b.name, b.x0, b.y0, b.x1, b.y1, 0, 0) for b in im.boxes))
        for im in gen.images
        if im.boxes or not listed_only
    ]
    return sorted(rows, key=lambda r: r[0])


def differences(got: list[Row], want: list[Row], atol: float = ATOL) -> str | None:
    """Where two sets of rows differ (None when they are the same within ``atol`` pixels)."""
    if [r[:3] for r in got] != [r[:3] for r in want]:
        return f"images (name, width, height) {[r[:3] for r in got]} != {[r[:3] for r in want]}"
    for g, w in zip(got, want):
        g_keys, w_keys = [(o[0], *o[5:]) for o in g[3]], [(o[0], *o[5:]) for o in w[3]]
        if g_keys != w_keys:
            return f"{g[0]}: classes/flags {g_keys} != {w_keys}"
        for a, b in zip(g[3], w[3]):
            if any(not abs(p - q) <= atol for p, q in zip(a[1:5], b[1:5])):
                return f"{g[0]}: box {a[1:5]} != {b[1:5]}"
    return None


# -- writing the files a tool would write ----------------------------------------------------------------------------
@dataclass
class Source:
    """A generated annotation folder: the files, what each one is, and what a reader must give for it."""

    fmt: str
    root: Path
    layout: str
    class_names: list[str]
    rows: list[Row]
    images: dict[str, Path]  # basename -> image file
    files: dict[Path, str] = field(default_factory=dict)  # annotation text file -> its kind
    names_in_files: dict[str, str] = field(default_factory=dict)  # basename -> how the annotations name the image
    implicit_negatives: bool = False  # an image without boxes has no annotation at all (YOLO folders)
    embedded: bool = False  # LabelMe files embed the image bytes

    def text_of(self, kind: str) -> str:
        """The text of the (first) file of this kind."""
        return next(p for p, k in self.files.items() if k == kind).read_text("utf-8-sig")


def _num(v: float) -> str:
    """A coordinate as tools write it: ``12`` for a whole number, else every digit (``repr``)."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _write_png(path: Path, width: int, height: int, k: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), ((37 * k) % 256, (91 * k + 40) % 256, 200)).save(path, format="PNG")
    return path


def _write_images(gen: GenDataset, folder: Path) -> dict[str, Path]:
    return {im.file_name: _write_png(folder / im.file_name, im.width, im.height, k) for k, im in enumerate(gen.images)}


def write_coco(gen: GenDataset, root: Path, draw: Draw, layout: str | None = None) -> Source:
    layout = layout or draw(st.sampled_from(["cvat", "roboflow"]), label="coco layout")
    images = _write_images(gen, root / "images" if layout == "cvat" else root)
    path = root / "annotations" / "instances_default.json" if layout == "cvat" else root / "_annotations.coco.json"
    n = len(gen.classes)
    ids = draw(st.lists(st.integers(0, 99), min_size=n, max_size=n, unique=True), label="category ids")
    cat_id = dict(zip(gen.classes, ids))
    listed = draw(st.permutations(gen.classes), label="category order")
    image_ids = draw(
        st.lists(st.integers(0, 10**6), min_size=len(gen.images), max_size=len(gen.images), unique=True),
        label="image ids",
    )
    ann_id = draw(st.integers(0, 1000), label="first annotation id")
    coco = {"info": {"description": "generated"}, "images": [], "annotations": [], "categories": []}
    for image_id, im in zip(image_ids, gen.images):
        coco["images"].append({"id": image_id, "file_name": im.file_name, "width": im.width, "height": im.height})
        for b in im.boxes:
            ann_id += 1
            w, h = b.x1 - b.x0, b.y1 - b.y0
            coco["annotations"].append(
                {"id": ann_id, "image_id": image_id, "category_id": cat_id[b.name], "segmentation": [],
                 "area": w * h, "bbox": [b.x0, b.y0, w, h], "iscrowd": 0}
            )  # fmt: skip
    coco["categories"] = [{"id": cat_id[c], "name": c, "supercategory": ""} for c in listed]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco, ensure_ascii=draw(st.booleans(), label="ascii json")), encoding="utf-8")
    return Source(
        "coco", root, layout, sorted(gen.classes, key=cat_id.get), truth_rows(gen), images, {path: "coco_json"},
        {im.file_name: im.file_name for im in gen.images},
    )  # fmt: skip


def _voc_xml(im: GenImage, one_based: bool, declaration: bool) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = im.file_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", im.width), ("height", im.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for b in im.boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = b.name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        shift = 1 if one_based else 0
        for tag, value in (("xmin", b.x0 + shift), ("ymin", b.y0 + shift), ("xmax", b.x1), ("ymax", b.y1)):
            ET.SubElement(box, tag).text = _num(value)
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode") + "\n"
    return ('<?xml version="1.0" encoding="utf-8"?>\n' + text) if declaration else text


def write_voc(gen: GenDataset, root: Path, draw: Draw, layout: str | None = None) -> Source:
    """Pascal VOC (1-based corners), or a CVAT/Datumaro VOC export: ``labelmap.txt`` and the corners as drawn."""
    layout = layout or draw(st.sampled_from(["pascal", "datumaro"]), label="voc layout")
    images = _write_images(gen, root / "JPEGImages")
    files = {}
    declaration = draw(st.booleans(), label="xml declaration")
    for im in gen.images:
        path = root / "Annotations" / f"{PurePosixPath(im.file_name).stem}.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_voc_xml(im, layout == "pascal", declaration), encoding="utf-8")
        files[path] = "voc_xml"
    names = gen.used_classes()
    if layout == "datumaro":
        names = list(gen.classes)
        lines = ["# label:color_rgb:parts:actions", "background:0,0,0::"]
        lines += [f"{c}:{k},{k},{k}::" for k, c in enumerate(names, start=1)]
        path = root / "labelmap.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[path] = "voc_labelmap"
    return Source(
        "voc", root, layout, names, truth_rows(gen), images, files, {im.file_name: im.file_name for im in gen.images}
    )


def _yolo_line(index: int, b: GenBox, im: GenImage) -> str:
    cx, cy = (b.x0 + b.x1) / 2 / im.width, (b.y0 + b.y1) / 2 / im.height
    return f"{index} {cx:.6f} {cy:.6f} {(b.x1 - b.x0) / im.width:.6f} {(b.y1 - b.y0) / im.height:.6f}"


def write_yolo(gen: GenDataset, root: Path, draw: Draw, layout: str | None = None) -> Source:
    """Ultralytics: ``data.yaml`` and ``images/train`` + ``labels/train`` ("folders"), or a ``train.txt`` list."""
    layout = layout or draw(st.sampled_from(["folders", "list"]), label="yolo layout")
    sub = "train" if layout == "folders" else ""
    images = _write_images(gen, root / "images" / sub)
    names = list(gen.classes)
    config = {"path": ".", "train": "images/train" if layout == "folders" else "train.txt"}
    config["names"] = dict(enumerate(names)) if draw(st.booleans(), label="names as dict") else names
    files = {}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    files[path] = "yolo_yaml"
    listed = {}
    for im in gen.images:
        label = root / "labels" / sub / f"{PurePosixPath(im.file_name).stem}.txt"
        if im.boxes or draw(st.booleans(), label=f"empty label file for {im.file_name}"):
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(_yolo_line(names.index(b.name), b, im) + "\n" for b in im.boxes), "utf-8")
            files[label] = "yolo_label"
        listed[im.file_name] = f"./images/{im.file_name}"
    if layout == "list":
        path = root / "train.txt"
        path.write_text("".join(f"{listed[im.file_name]}\n" for im in gen.images), encoding="utf-8")
        files[path] = "yolo_list"
    return Source(
        "yolo", root, layout, names, truth_rows(gen), images, files, listed, implicit_negatives=layout == "folders"
    )


def write_labelme(gen: GenDataset, root: Path, draw: Draw, layout: str | None = None) -> Source:
    """One JSON per image beside it; rectangles with their two corners in the order they were dragged."""
    embed = draw(st.booleans(), label="labelme imageData") if layout is None else layout == "embedded"
    images = _write_images(gen, root)
    files = {}
    ascii_json = draw(st.booleans(), label="ascii json")
    for im in gen.images:
        shapes = []
        for b in im.boxes:
            corners = draw(st.sampled_from([((0, 1), (2, 3)), ((2, 3), (0, 1)), ((0, 3), (2, 1)), ((2, 1), (0, 3))]))
            values = (b.x0, b.y0, b.x1, b.y1)
            points = [[values[i], values[j]] for i, j in corners]
            shapes.append({"label": b.name, "points": points, "group_id": None, "description": "",
                           "shape_type": "rectangle", "flags": {}})  # fmt: skip
        data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": im.file_name,
                "imageData": base64.b64encode(images[im.file_name].read_bytes()).decode() if embed else None,
                "imageHeight": im.height, "imageWidth": im.width}  # fmt: skip
        path = root / f"{PurePosixPath(im.file_name).stem}.json"
        path.write_text(json.dumps(data, ensure_ascii=ascii_json, indent=2), encoding="utf-8")
        files[path] = "labelme_json"
    return Source(
        "labelme", root, "embedded" if embed else "plain", gen.used_classes(), truth_rows(gen), images, files,
        {im.file_name: im.file_name for im in gen.images}, embedded=embed,
    )  # fmt: skip


def write_cvat(gen: GenDataset, root: Path, draw: Draw, layout: str | None = None) -> Source:
    """CVAT for images 1.1: the task's ``<labels>`` (every class, in order) and one ``<image>`` per image."""
    images = _write_images(gen, root / "images")
    top = ET.Element("annotations")
    ET.SubElement(top, "version").text = "1.1"
    labels = ET.SubElement(ET.SubElement(ET.SubElement(top, "meta"), "task"), "labels")
    for c in gen.classes:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = c
        ET.SubElement(label, "color").text = "#33ddff"
        ET.SubElement(label, "attributes")
    for k, im in enumerate(gen.images):
        attributes = {"id": str(k), "name": im.file_name, "width": str(im.width), "height": str(im.height)}
        element = ET.SubElement(top, "image", attributes)
        for b in im.boxes:
            ET.SubElement(element, "box", {"label": b.name, "source": "manual", "occluded": "0", "xtl": _num(b.x0),
                                           "ytl": _num(b.y0), "xbr": _num(b.x1), "ybr": _num(b.y1), "z_order": "0"})  # fmt: skip
    ET.indent(top)
    path = root / "annotations.xml"
    path.write_text('<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(top, encoding="unicode") + "\n", "utf-8")
    return Source(
        "cvat", root, "task", list(gen.classes), truth_rows(gen), images, {path: "cvat_xml"},
        {im.file_name: im.file_name for im in gen.images},
    )  # fmt: skip


CSV_COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")


def write_csv(gen: GenDataset, root: Path, draw: Draw, layout: str | None = None) -> Source:
    """One row per box (a negative: a row with no class and no corners); written with or without a BOM (Excel)."""
    layout = layout or draw(st.sampled_from(["utf-8", "utf-8-sig"]), label="csv encoding")
    prefix = draw(st.sampled_from(["images/", ""]), label="csv filename prefix")
    columns = list(draw(st.permutations(CSV_COLUMNS), label="csv column order"))
    images = _write_images(gen, root / "images")
    rows = []
    for im in gen.images:
        values = {"filename": prefix + im.file_name, "width": str(im.width), "height": str(im.height)}
        for b in im.boxes or [None]:
            box = dict(zip(("xmin", "ymin", "xmax", "ymax"), map(_num, (b.x0, b.y0, b.x1, b.y1)))) if b else {}
            rows.append({**values, "class": b.name if b else "", **box})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    path = root / "labels.csv"
    path.write_bytes(buffer.getvalue().encode(layout))
    return Source(
        "csv", root, layout, gen.used_classes(), truth_rows(gen), images, {path: "csv"},
        {im.file_name: prefix + im.file_name for im in gen.images},
    )  # fmt: skip


OI_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
              "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")  # fmt: skip


def write_openimages(gen: GenDataset, root: Path, draw: Draw, layout: str | None = None) -> Source:
    """Open Images boxes (fractions; ImageID is the image's stem), with machine ids named by a class-descriptions
    file, or with the names themselves as ``LabelName``."""
    layout = layout or draw(st.sampled_from(["descriptions", "names"]), label="openimages layout")
    images = _write_images(gen, root / "images")
    mids = {c: (f"/m/0{k}x" if layout == "descriptions" else c) for k, c in enumerate(gen.classes)}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(OI_COLUMNS)
    for im in gen.images:
        stem = PurePosixPath(im.file_name).stem
        for b in im.boxes:
            fractions = (b.x0 / im.width, b.x1 / im.width, b.y0 / im.height, b.y1 / im.height)
            writer.writerow([stem, "xclick", mids[b.name], "1", *map(repr, fractions), 0, 0, 0, 0, 0])
    path = root / "annotations-bbox.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    files = {path: "oi_csv"}
    if layout == "descriptions":
        described = root / "class-descriptions-boxable.csv"
        lines = io.StringIO()
        csv.writer(lines).writerows([mids[c], c] for c in gen.classes)
        described.write_text(lines.getvalue(), encoding="utf-8")
        files[described] = "oi_descriptions"
    return Source(
        "openimages", root, layout, gen.used_classes(), truth_rows(gen, listed_only=True), images, files,
        {im.file_name: PurePosixPath(im.file_name).stem for im in gen.images},
    )  # fmt: skip


WRITERS = {
    "coco": write_coco,
    "voc": write_voc,
    "yolo": write_yolo,
    "labelme": write_labelme,
    "cvat": write_cvat,
    "csv": write_csv,
    "openimages": write_openimages,
}


# -- corruptions -----------------------------------------------------------------------------------------------------
@dataclass
class Corruption:
    """One change to a valid folder: what it did, and which outcomes it allows (see the module docstring)."""

    kind: str
    file: Path
    what: str
    expect: str  # "noticed" | "no_silent_change" | "any"
    names: tuple[str, ...]  # an error message or the fix must name one of these (file names)
    # every box record stays readable, so the report must account for each: boxes read = kept + lost = generated
    accountable: bool = False


ANNOTATION_KINDS = ("coco_json", "labelme_json", "voc_xml", "cvat_xml", "yolo_label", "csv", "oi_csv")
LINE_KINDS = ("yolo_label", "csv", "oi_csv")

# Replacement values: JSON values, and the text other formats write for them. None: the original's negative.
_LARGE = "\0LARGE\0"  # json.dumps cannot write 1e400; this marker is swapped for the literal afterwards
BAD_VALUES = {
    "string": ("abc", "abc"),
    "list": ([1, 2], "[1, 2]"),
    "null": (None, ""),
    "negative": (None, None),
    "huge": (10**9, "1e9"),
    "inf": (math.inf, "inf"),
    "-inf": (-math.inf, "-inf"),
    "nan": (math.nan, "nan"),
    "1e400": (_LARGE, "1e400"),
}
# What each replaced number is, and which replacements make it wrong. Ids may be any integer (a huge or negative id
# is another valid file); boxes and class references must be noticed; sizes, ids and flags may be ignored, but
# must not change the dataset silently.
_WRONG_FOR_IDS = ("string", "list", "null", "inf", "-inf", "nan", "1e400")
MUST_NOTICE = ("box", "ref")


def _bad_json(name: str, original: object) -> object:
    value = BAD_VALUES[name][0]
    if name == "negative":
        return -(abs(original) + 5) if isinstance(original, (int, float)) else -5
    return value


def _bad_text(name: str, original: str) -> str:
    if name == "negative":
        try:
            return _num(-(abs(float(original)) + 5))
        except ValueError:
            return "-5"
    return BAD_VALUES[name][1]


def _json_number_kind(fmt_kind: str, path: tuple) -> str:
    keys = [p for p in path if isinstance(p, str)]
    if fmt_kind == "labelme_json":
        return "box" if "points" in keys else ("size" if keys[-1] in ("imageWidth", "imageHeight") else "other")
    last = keys[-1]
    if "bbox" in keys:
        return "box"
    if last in ("category_id", "image_id"):
        return "ref"
    if last in ("width", "height"):
        return "size"
    if last == "id":
        return "id"
    return "flag" if last == "iscrowd" else "other"


def _json_targets(node: object, path: tuple = ()) -> list[tuple]:
    if isinstance(node, bool) or node is None or isinstance(node, str):
        return []
    if isinstance(node, (int, float)):
        return [path]
    items = node.items() if isinstance(node, dict) else enumerate(node)
    return [t for key, value in items for t in _json_targets(value, (*path, key))]


def _set(node: object, path: tuple, value: object) -> object:
    if not path:
        return value
    node[path[0]] = _set(node[path[0]], path[1:], value)
    return node


def _get(node: object, path: tuple) -> object:
    for key in path:
        node = node[key]
    return node


def _dump_json(data: object) -> str:
    return json.dumps(data, ensure_ascii=False).replace(json.dumps(_LARGE), "1e400")


def _choose_value(draw: Draw, kind: str) -> str:
    names = _WRONG_FOR_IDS if kind == "id" else tuple(BAD_VALUES)
    return draw(st.sampled_from(names), label="replacement")


def replace_number(source: Source, draw: Draw) -> Corruption | None:
    """A number in an annotation file becomes a wrong type (string, list, null) or an out-of-range number; or, in
    JSON, a container (the whole file, ``images``, one record) becomes a wrong type."""
    files = sorted(p for p, k in source.files.items() if k in ANNOTATION_KINDS and p.read_text("utf-8-sig").strip())
    if not files:
        return None
    path = draw(st.sampled_from(files), label="file")
    kind = source.files[path]
    text = path.read_text("utf-8-sig")
    rel = path.relative_to(source.root).as_posix()
    if kind in ("coco_json", "labelme_json"):
        data = json.loads(text)
        containers = [(), *((k,) for k, v in data.items() if isinstance(v, list))]
        containers += [(k, i) for k, v in data.items() if isinstance(v, list) for i in range(len(v))]
        targets = _json_targets(data)
        if not targets or draw(st.integers(0, 4), label="container instead of number") == 0:
            where = draw(st.sampled_from(containers), label="container")
            value = draw(st.sampled_from(["abc", 5, None, [], {}]), label="replacement")
            if type(value) is type(_get(data, where)):
                return None
            path.write_text(_dump_json(_set(data, where, value)), encoding="utf-8")
            return Corruption("number", path, f"{rel}: {list(where)} -> {value!r}", "no_silent_change", (path.name,))
        where = draw(st.sampled_from(targets), label="number")
        target_kind = _json_number_kind(kind, where)
        name = _choose_value(draw, target_kind)
        original = _get(data, where)
        path.write_text(_dump_json(_set(data, where, _bad_json(name, original))), encoding="utf-8")
        what = f"{rel}: {list(where)} = {original!r} -> {name}"
    elif kind in ("voc_xml", "cvat_xml"):
        tree = ET.parse(path)
        targets = []  # (element, attribute or None, kind)
        for el in tree.getroot().iter():
            if kind == "voc_xml" and len(el) == 0 and _is_number(el.text):
                targets.append((el, None, _voc_kind(el.tag)))
            if kind == "cvat_xml" and el.tag in ("image", "box"):
                targets += [(el, a, _cvat_kind(el.tag, a)) for a, v in el.attrib.items() if _is_number(v)]
        if not targets:
            return None
        el, attribute, target_kind = draw(st.sampled_from(targets), label="number")
        original = el.get(attribute) if attribute else el.text
        name = _choose_value(draw, target_kind)
        if attribute:
            el.set(attribute, _bad_text(name, original))
        else:
            el.text = _bad_text(name, original)
        declaration = '<?xml version="1.0" encoding="utf-8"?>\n' if text.startswith("<?xml") else ""
        path.write_text(declaration + ET.tostring(tree.getroot(), encoding="unicode"), encoding="utf-8")
        what = f"{rel}: <{el.tag}{' ' + attribute if attribute else ''}> = {original!r} -> {name}"
    elif kind == "yolo_label":
        lines = text.splitlines()
        k = draw(st.sampled_from([i for i, line in enumerate(lines) if line.split()]), label="line")
        tokens = lines[k].split()
        t = draw(st.integers(0, len(tokens) - 1), label="token")
        target_kind = "ref" if t == 0 else "box"
        name = _choose_value(draw, target_kind)
        original, tokens[t] = tokens[t], _bad_text(name, tokens[t])
        lines[k] = " ".join(tokens)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        what = f"{rel}: line {k + 1} token {t} = {original!r} -> {name}"
    else:  # csv, oi_csv
        bom = path.read_bytes().startswith(b"\xef\xbb\xbf")
        table = list(csv.reader(io.StringIO(text)))
        header = table[0]
        kinds = _table_kinds(kind, header)
        cells = [(r, c) for r in range(1, len(table)) for c in range(len(header)) if kinds[c] and table[r][c].strip()]
        if not cells:
            return None
        r, c = draw(st.sampled_from(cells), label="cell")
        target_kind = kinds[c]
        name = _choose_value(draw, target_kind)
        original, table[r][c] = table[r][c], _bad_text(name, table[r][c])
        buffer = io.StringIO()
        csv.writer(buffer).writerows(table)
        path.write_bytes(buffer.getvalue().encode("utf-8-sig" if bom else "utf-8"))
        what = f"{rel}: line {r + 1} {header[c]} = {original!r} -> {name}"
    expect = "noticed" if target_kind in MUST_NOTICE else "no_silent_change"
    return Corruption("number", path, what, expect, (path.name,), accountable=True)


def _is_number(text: str | None) -> bool:
    try:
        float((text or "").strip())
    except ValueError:
        return False
    return True


def _voc_kind(tag: str) -> str:
    if tag in ("xmin", "ymin", "xmax", "ymax"):
        return "box"
    if tag in ("width", "height"):
        return "size"
    return "flag" if tag in ("difficult", "truncated") else "other"


def _cvat_kind(tag: str, attribute: str) -> str:
    if tag == "box" and attribute in ("xtl", "ytl", "xbr", "ybr"):
        return "box"
    if attribute in ("width", "height"):
        return "size"
    return "id" if attribute == "id" else "other"


def _table_kinds(kind: str, header: list[str]) -> list[str | None]:
    out = []
    for column in (h.strip().lower() for h in header):
        if column in ("xmin", "ymin", "xmax", "ymax"):
            out.append("box")
        elif kind == "csv" and column in ("width", "height"):
            out.append("size")
        elif kind == "oi_csv" and column.startswith("is"):
            out.append("flag")
        else:
            out.append(None)
    return out


def _partial_line_is_valid(source: Source, kind: str, partial: str) -> bool:
    """Whether the cut-off last line is itself a complete, valid record: then the cut cannot be seen."""
    if not partial.strip():
        return True
    if kind == "yolo_label":
        tokens = partial.split()
        if len(tokens) != 5 or not tokens[0].isdigit() or int(tokens[0]) >= len(source.class_names):
            return False
        return all(_is_number(t) and math.isfinite(float(t)) for t in tokens[1:])
    fields = next(csv.reader([partial]), [])
    if kind == "oi_csv":
        return len(fields) == len(OI_COLUMNS)  # only the last flag (IsInside) was cut
    header = [h.strip().lower() for h in next(csv.reader(io.StringIO(source.text_of(kind))))]
    row = dict(zip(header, [f.strip() for f in fields]))
    if row.get("filename", "") not in source.names_in_files.values():
        return False  # a cut file name names a file that is not there: noticed
    box = [row.get(k, "") for k in ("class", "xmin", "ymin", "xmax", "ymax")]
    return not any(box) or all(box)  # a negative's row, or a complete box (whose last digits may be cut)


def truncate(source: Source, draw: Draw) -> Corruption | None:
    """An annotation file cut at a random byte (an interrupted export or copy)."""
    files = sorted(p for p, k in source.files.items() if k in ANNOTATION_KINDS and p.stat().st_size)
    if not files:
        return None
    path = draw(st.sampled_from(files), label="file")
    kind = source.files[path]
    data = path.read_bytes()
    at = draw(st.integers(0, len(data) - 1), label="cut at byte")
    if not data[at:].strip():
        return None  # only trailing whitespace cut: the same file
    expect = "noticed"
    if kind in LINE_KINDS:
        partial = data[:at].decode("utf-8", errors="replace").rsplit("\n", 1)[-1]
        header_cut = kind != "yolo_label" and b"\n" not in data[:at]
        if not header_cut and _partial_line_is_valid(source, kind, partial):
            expect = "any"
    path.write_bytes(data[:at])
    return Corruption("truncate", path, f"{path.relative_to(source.root)} cut at byte {at} of {len(data)}", expect,
                      (path.name,))  # fmt: skip


def invalid_bytes(source: Source, draw: Draw) -> Corruption | None:
    """A text file made invalid UTF-8: re-encoded in Latin-1 (where it can be), or random bytes inserted."""
    files = sorted(p for p in source.files if p.stat().st_size)
    if not files:
        return None
    path = draw(st.sampled_from(files), label="file")
    data = path.read_bytes()
    text = data.decode("utf-8-sig")
    rel = path.relative_to(source.root).as_posix()
    latin = "".join(ch for ch in text if 0x80 <= ord(ch) < 0x100)
    if latin and draw(st.booleans(), label="latin-1"):
        new = b"".join(ch.encode("latin-1") if ord(ch) < 0x100 else ch.encode("utf-8") for ch in text)
        what = f"{rel} re-encoded in Latin-1 ({latin!r})"
    else:
        at = draw(st.integers(0, len(data)), label="insert at byte")
        junk = draw(st.binary(min_size=1, max_size=4).filter(lambda b: max(b) >= 0x80), label="bytes")
        new = data[:at] + junk + data[at:]
        what = f"{rel}: {junk!r} inserted at byte {at}"
    try:
        new.decode("utf-8")
        return None  # the bytes happened to form valid UTF-8: another text, not an encoding problem
    except UnicodeDecodeError:
        pass
    path.write_bytes(new)
    return Corruption("bytes", path, what, "no_silent_change", (path.name,))


HOSTILE_PATHS = st.one_of(
    st.integers(1, 3).map(lambda k: "../" * k + OUTSIDE),
    st.integers(1, 3).map(lambda k: "..\\" * k + OUTSIDE),
    st.just("images/../../" + OUTSIDE),
    st.just("/etc/passwd"),
    st.just("C:\\x.png"),
    st.just("C:/Windows/" + OUTSIDE),
    st.just("\\\\server\\share\\" + OUTSIDE),
    st.just("ABSOLUTE_OUTSIDE"),  # replaced by the absolute path of the outside image
)


def hostile_path(source: Source, draw: Draw, outside: Path) -> Corruption | None:
    """An image named by a path that leaves the dataset folder (``../../x.png``, ``/etc/passwd``, ``C:\\x.png``)."""
    basename = draw(st.sampled_from(sorted(source.names_in_files)), label="image")
    listed = source.names_in_files[basename]
    hostile = draw(HOSTILE_PATHS, label="hostile path")
    if hostile == "ABSOLUTE_OUTSIDE":
        hostile = str(outside)
    elif draw(st.booleans(), label="keep the image's own name"):  # the tail names the dataset's own image
        hostile = hostile.replace(OUTSIDE, basename).replace("x.png", basename).replace("/etc/passwd", "/" + basename)
    changed = None
    for path, kind in sorted(source.files.items()):
        text = path.read_text("utf-8-sig")
        new = _rename_image(kind, text, listed, hostile)
        if new is not None:
            bom = "\ufeff" if path.read_bytes().startswith(b"\xef\xbb\xbf") else ""
            path.write_text(bom + new, encoding="utf-8")
            changed = path
    if changed is None:
        return None  # the image is in no annotation (an Open Images negative)
    rel = changed.relative_to(source.root).as_posix()
    what = f"{rel}: {listed!r} -> {hostile!r}"
    return Corruption("hostile", changed, what, "no_silent_change", (changed.name,), accountable=True)


def _rename_image(kind: str, text: str, listed: str, hostile: str) -> str | None:
    """``text`` of a file of ``kind`` with the image ``listed`` renamed ``hostile``; None if it does not name it."""
    hit = False
    if kind in ("coco_json", "labelme_json"):
        data = json.loads(text)
        entries = data["images"] if kind == "coco_json" else [data]
        key = "file_name" if kind == "coco_json" else "imagePath"
        for entry in entries:
            if entry.get(key) == listed:
                entry[key], hit = hostile, True
        return _dump_json(data) if hit else None
    if kind in ("voc_xml", "cvat_xml"):
        root = ET.fromstring(text)
        for el in root.iter():
            if kind == "voc_xml" and el.tag == "filename" and el.text == listed:
                el.text, hit = hostile, True
            if kind == "cvat_xml" and el.tag == "image" and el.get("name") == listed:
                el.set("name", hostile)
                hit = True
        declaration = '<?xml version="1.0" encoding="utf-8"?>\n' if text.startswith("<?xml") else ""
        return declaration + ET.tostring(root, encoding="unicode") if hit else None
    if kind in ("csv", "oi_csv"):
        table = list(csv.reader(io.StringIO(text)))
        column = [h.strip().lower() for h in table[0]].index("filename" if kind == "csv" else "imageid")
        for row in table[1:]:
            if row and row[column] == listed:
                row[column], hit = hostile, True
        buffer = io.StringIO()
        csv.writer(buffer).writerows(table)
        return buffer.getvalue() if hit else None
    if kind == "yolo_list":
        lines = text.splitlines()
        return "".join((hostile if line == listed else line) + "\n" for line in lines) if listed in lines else None
    return None


def delete_image(source: Source, draw: Draw) -> Corruption:
    """One image file deleted."""
    basename = draw(st.sampled_from(sorted(source.images)), label="image")
    path = source.images[basename]
    path.unlink()
    row = {r[0]: r for r in source.rows}.get(basename)
    if row is None or source.embedded:
        expect = "no_silent_change"  # not in the annotations (an Open Images negative), or embedded in them
    elif source.implicit_negatives and not row[3]:
        expect = "any"  # a YOLO negative: an image without boxes in a folder, which nothing lists
    else:
        expect = "noticed"
    stem = PurePosixPath(basename).stem
    names = (basename, source.names_in_files[basename], f"{stem}.txt", f"{stem}.json", f"{stem}.xml")
    return Corruption("missing", path, f"{path.relative_to(source.root)} deleted", expect, names, accountable=True)
