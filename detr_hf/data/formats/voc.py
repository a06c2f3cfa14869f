"""Pascal VOC XML: one ``<annotation>`` file per image; read and write.

VOC corners are 1-based inclusive pixel indices (see :func:`~detr_hf.data.formats.coordinates.voc_to_xyxy`). CVAT's
"PASCAL VOC 1.1" and Datumaro exports, which write a ``labelmap.txt`` beside ``Annotations/``, write their continuous
(COCO-like) box corners unchanged instead: with a ``labelmap.txt`` the corners are read 0-based, so the same CVAT task
gives the same boxes exported as VOC or as COCO. ``one_based=True``/``False`` overrides the guess. ``difficult`` and
``truncated`` are kept as object fields. Splits come from ``ImageSets/Main/{train,val,test}.txt`` when present; the
class list from ``labelmap.txt`` when present, else the names found, sorted.

MIT LabelMe 3.0 XML shares the ``<annotation>`` root element; its files (polygons of ``<pt>``, no ``<bndbox>``) are
left to :mod:`~detr_hf.data.formats.labelme_xml`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from datasets import Dataset

from ...box_ops import xywh_to_xyxy
from ..report import DatasetValidationError
from ..schema import Category, class_names_of
from ..splits import normalize_split_name
from .base import (
    ReadContext,
    SourceData,
    SourceImage,
    SourceObject,
    no_files_error,
    report_rejected,
    walk_files,
    xml_problem,
)
from .coordinates import format_number, parse_flag, parse_number, parse_size, voc_to_xyxy, xyxy_to_voc
from .writing import check_crowd_policy, keep_object, safe_join, safe_relative, write_image_files

NAME = "voc"
ALIASES: tuple[str, ...] = ("pascal_voc", "pascalvoc")
_ROOT_TAG = re.compile(rb"<\s*([A-Za-z_][\w.-]*)[\s>/]")
# MIT LabelMe's own elements, whole names only: VOC's ``<segmented>`` is no ``<segm>``
_LABELME_TAG = re.compile(rb"<(?:polygon|pt|segm|imagesize)[\s>/]")


def _root_tag(head: bytes) -> str | None:
    head = re.sub(rb"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>", b"", head[:4096], flags=re.S)
    match = _ROOT_TAG.search(head)
    return match.group(1).decode() if match else None


def xml_root_tag(path: str | Path) -> str | None:
    """The root element's name, read from the first bytes (skipping the declaration and comments)."""
    with open(path, "rb") as f:
        return _root_tag(f.read(4096))


def annotation_xml_kind(path: str | Path) -> str | None:
    """``"voc"`` or ``"labelme_xml"`` for an ``<annotation>`` file, by what its objects hold; None for other XML.

    A VOC object has a ``<bndbox>``; a MIT LabelMe object a ``<polygon>`` of ``<pt>`` (or a ``<segm>``), and its
    image size is ``<imagesize>``. A file with neither (an image without objects) is VOC unless it has ``<imagesize>``.
    """
    with open(path, "rb") as f:
        head = f.read(1 << 18)
    if _root_tag(head) != "annotation":
        return None
    if b"<bndbox" in head:
        return "voc"
    if _LABELME_TAG.search(head):
        return "labelme_xml"
    return "voc"


def find_files(root: Path) -> list[str]:
    return [p for p in walk_files(root, ".xml") if annotation_xml_kind(p) == "voc"]


def _read_list_text(path: Path, root: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetValidationError(
            f"{path.relative_to(root).as_posix()}: not UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8"
        ) from None


def _split_lists(root: Path) -> dict[str, str]:
    """Image stem -> split, from ``ImageSets/Main/<split>.txt`` (class lists such as ``cat_train.txt`` skipped)."""
    lists = {p.stem: p for p in root.rglob("ImageSets/Main/*.txt") if "_" not in p.stem}
    if "train" in lists and "val" in lists:
        lists.pop("trainval", None)
    lists.pop("default", None)  # Datumaro's single unnamed subset
    out: dict[str, str] = {}
    for stem, path in sorted(lists.items()):
        split = normalize_split_name(stem)
        for line in _read_list_text(path, root).splitlines():
            if line.strip():
                out.setdefault(line.split()[0], split)
    return out


def _labelmap_path(root: Path) -> Path | None:
    """The ``labelmap.txt`` CVAT and Datumaro write beside ``Annotations/``, if there is one."""
    return next(iter(sorted(root.rglob("labelmap.txt"))), None)


def _labelmap(path: Path | None, root: Path) -> list[Category] | None:
    """Datumaro's ``labelmap.txt`` (``name:color:parts:actions``), without its ``background`` entry."""
    if path is None:
        return None
    names = []
    for line in _read_list_text(path, root).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name = line.split(":")[0].strip()
            if name and name != "background":
                names.append(name)
    return [Category(name=n) for n in names]


def _flag(element: ET.Element, tag: str, ctx: ReadContext, ann_file: str, record: str) -> int:
    """A 0/1 flag (empty: 0); any other value is a ``malformed`` fix and reads as 0."""
    text = (element.findtext(tag) or "").strip()
    value = parse_flag(text)
    if value is not None:
        return value
    ctx.issue("malformed", ann_file, record, f"<{tag}> is {text!r}, not 0 or 1: read as 0")
    return 0


def read_file(path: Path, ctx: ReadContext, split_of: dict[str, str], one_based: bool) -> SourceImage | None:
    ann_file = ctx.rel(path)
    root = ctx.parse_xml(path)
    if root is None:
        return None
    name = (root.findtext("filename") or "").strip() or path.stem
    size_el = root.find("size")
    size = None if size_el is None else parse_size(size_el.findtext("width"), size_el.findtext("height"))
    folder = (root.findtext("folder") or "").strip()
    base_dirs = (path.parent, path.parent.parent / "JPEGImages", path.parent.parent / "images", ctx.root / folder)
    stem = Path(name).stem
    image = ctx.make_image(name, ann_file, base_dirs=base_dirs, declared_size=size, split=split_of.get(stem))
    for k, obj in enumerate(root.findall("object"), start=1):
        record = f"object {k}"
        label = (obj.findtext("name") or "").strip()
        box_el = obj.find("bndbox")
        try:
            if not label:
                raise ValueError("no <name>")
            if box_el is None:
                raise ValueError("no <bndbox>")
            corners = [parse_number(box_el.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as e:
            ctx.issue("malformed", ann_file, record, f"unreadable object: {e}", boxes_lost=1)
            continue
        image.objects.append(
            SourceObject(
                name=label,
                box=voc_to_xyxy(*corners, one_based=one_based),
                record=record,
                difficult=_flag(obj, "difficult", ctx, ann_file, record),
                truncated=_flag(obj, "truncated", ctx, ann_file, record),
            )
        )
    return image


def read(ctx: ReadContext, one_based: bool | None = None) -> SourceData:
    """Read every VOC XML file under the source folder.

    ``one_based=None`` reads the corners 1-based (Pascal VOC's own numbering) unless a ``labelmap.txt`` marks a CVAT
    or Datumaro export, whose corners are read as written (0-based); the choice is noted in the report.
    """
    candidates = walk_files(ctx.root, ".xml")
    files = [p for p in candidates if annotation_xml_kind(p) == "voc"]
    rejected = report_rejected(ctx, candidates, files, xml_problem, "Pascal VOC XML")
    if not files:
        if any(annotation_xml_kind(p) == "labelme_xml" for p in candidates):
            raise DatasetValidationError(
                f"{ctx.root}: these <annotation> files are MIT LabelMe XML (polygons, no <bndbox>), not Pascal VOC; "
                "read them with format='labelme_xml'"
            )
        raise no_files_error(ctx, "no Pascal VOC XML file (root element <annotation>) found", rejected)
    split_of = _split_lists(ctx.root)
    labelmap = _labelmap_path(ctx.root)
    if one_based is None:
        one_based = labelmap is None
        if labelmap is not None:
            ctx.report.notes.append(
                f"{ctx.rel(labelmap)}: a CVAT/Datumaro export, whose box corners are read as written (0-based); "
                "pass one_based=True for corners counted from 1 as in the original Pascal VOC files"
            )
    images = (image for p in files if (image := read_file(Path(p), ctx, split_of, one_based)) is not None)
    return SourceData(images=images, categories=_labelmap(labelmap, ctx.root))


# -- writing -------------------------------------------------------------------------------------------------------
def write_annotation(
    file_name: str, width: int, height: int, objects: dict, class_names: list[str], one_based: bool = True
) -> str:
    """One image's VOC XML text."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = Path(file_name).name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for j, bbox in enumerate(objects["bbox"]):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[objects["category"][j]]
        for key in ("truncated", "difficult"):
            ET.SubElement(obj, key).text = str(int((objects.get(key) or [0] * len(objects["bbox"]))[j]))
        box = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), xyxy_to_voc(xywh_to_xyxy(bbox), one_based)):
            ET.SubElement(box, tag).text = format_number(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _select(objects: dict, indices: list[int]) -> dict:
    return {key: [values[j] for j in indices] if values is not None else None for key, values in objects.items()}


def export_voc(dataset: Dataset, output_dir: str | Path, *, one_based: bool = True, crowd: str = "refuse") -> Path:
    """Write ``Annotations/<stem>.xml`` and ``JPEGImages/<file_name>`` for every record of ``dataset``.

    VOC cannot mark a crowd (ignore) region: ``crowd="refuse"`` raises when the dataset has one, ``"drop"`` leaves
    them out and ``"as_object"`` writes them as ordinary boxes. A ``file_name`` that would land outside
    ``output_dir`` (``../x.png``, ``/abs/x.png``) raises before anything is written.
    """
    output_dir = Path(output_dir)
    annotations_dir, images_dir = output_dir / "Annotations", output_dir / "JPEGImages"
    xml_paths = []
    for i, name in enumerate(dataset["file_name"]):
        record = f"record {i}"
        safe_join(images_dir, name, record)
        xml_paths.append(safe_join(annotations_dir, f"{safe_relative(name, record).stem}.xml", record))
    repeated = sorted(p.stem for p, n in Counter(xml_paths).items() if n > 1)
    if repeated:
        raise ValueError(f"VOC names annotation files after their images; these names repeat: {repeated[:5]}")
    check_crowd_policy(dataset, crowd, "Pascal VOC")
    annotations_dir.mkdir(parents=True, exist_ok=True)
    names = class_names_of(dataset)
    rows = dataset.select_columns(["file_name", "width", "height", "objects"])
    for xml_path, row in zip(xml_paths, rows):
        objects = row["objects"]
        kept = [j for j in range(len(objects["bbox"])) if keep_object(objects.get("iscrowd"), j, crowd)]
        file_name = safe_relative(row["file_name"]).name
        xml = write_annotation(file_name, row["width"], row["height"], _select(objects, kept), names, one_based)
        xml_path.write_text(xml, encoding="utf-8")
    write_image_files(dataset, images_dir)
    return output_dir


export = export_voc  # the registry's name for it (formats.export_dataset)
