"""Pascal VOC XML: one ``<annotation>`` file per image; read and write.

VOC corners are 1-based inclusive pixel indices (see :func:`~detr_hf.data.formats.geometry.voc_to_xyxy`); pass
``one_based=False`` for files whose tool wrote 0-based corners instead (CVAT and Datumaro exports do). ``difficult`` and
``truncated`` are kept as object fields. Splits come from ``ImageSets/Main/{train,val,test}.txt`` when present; the
class list from ``labelmap.txt`` (Datumaro) when present, else the names found, sorted.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from datasets import Dataset

from ..report import DatasetValidationError
from ..schema import class_names_of
from .base import (
    ReadContext,
    SourceCategory,
    SourceData,
    SourceImage,
    SourceObject,
    normalize_split_name,
    walk_files,
)
from .geometry import format_number, parse_number, voc_to_xyxy, xywh_to_xyxy, xyxy_to_voc
from .images import write_image_files

NAME = "voc"
_ROOT_TAG = re.compile(rb"<\s*([A-Za-z_][\w.-]*)[\s>/]")


def xml_root_tag(path: str | Path) -> str | None:
    """The root element's name, read from the first bytes (skipping the declaration and comments)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    head = re.sub(rb"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>", b"", head, flags=re.S)
    match = _ROOT_TAG.search(head)
    return match.group(1).decode() if match else None


def find_files(root: Path) -> list[str]:
    return [p for p in walk_files(root, ".xml") if xml_root_tag(p) == "annotation"]


def _split_lists(root: Path) -> dict[str, str]:
    """Image stem -> split, from ``ImageSets/Main/<split>.txt`` (class lists such as ``cat_train.txt`` skipped)."""
    lists = {p.stem: p for p in root.rglob("ImageSets/Main/*.txt") if "_" not in p.stem}
    if "train" in lists and "val" in lists:
        lists.pop("trainval", None)
    lists.pop("default", None)  # Datumaro's single unnamed subset
    out: dict[str, str] = {}
    for stem, path in sorted(lists.items()):
        split = normalize_split_name(stem)
        for line in path.read_text().splitlines():
            if line.strip():
                out.setdefault(line.split()[0], split)
    return out


def _labelmap(root: Path) -> list[SourceCategory] | None:
    """Datumaro's ``labelmap.txt`` (``name:color:parts:actions``), without its ``background`` entry."""
    paths = sorted(root.rglob("labelmap.txt"))
    if not paths:
        return None
    names = []
    for line in paths[0].read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name = line.split(":")[0].strip()
            if name and name != "background":
                names.append(name)
    return [SourceCategory(name=n) for n in names]


def _flag(element: ET.Element, tag: str) -> int:
    text = element.findtext(tag)
    try:
        return int(bool(int(float(text)))) if text and text.strip() else 0
    except ValueError:
        return 0


def read_file(path: Path, ctx: ReadContext, split_of: dict[str, str], one_based: bool) -> SourceImage | None:
    ann_file = ctx.rel(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        ctx.issue("malformed", ann_file, f"line {e.position[0]}", f"not valid XML ({e}); file skipped")
        return None
    name = (root.findtext("filename") or "").strip() or path.stem
    size = None
    size_el = root.find("size")
    if size_el is not None:
        try:
            w, h = int(parse_number(size_el.findtext("width"))), int(parse_number(size_el.findtext("height")))
            size = (w, h) if w > 0 and h > 0 else None
        except ValueError:
            size = None
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
                difficult=_flag(obj, "difficult"),
                truncated=_flag(obj, "truncated"),
            )
        )
    return image


def read(ctx: ReadContext, one_based: bool = True) -> SourceData:
    """Read every VOC XML file under the source folder."""
    files = find_files(ctx.root)
    if not files:
        raise DatasetValidationError(f"{ctx.root}: no Pascal VOC XML file (root element <annotation>) found")
    split_of = _split_lists(ctx.root)
    images = (image for p in files if (image := read_file(Path(p), ctx, split_of, one_based)) is not None)
    return SourceData(images=images, categories=_labelmap(ctx.root))


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
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), xyxy_to_voc(xywh_to_xyxy(*bbox), one_based)):
            ET.SubElement(box, tag).text = format_number(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def export_voc(dataset: Dataset, output_dir: str | Path, *, one_based: bool = True) -> Path:
    """Write ``Annotations/<stem>.xml`` and ``JPEGImages/<file_name>`` for every record of ``dataset``."""
    output_dir = Path(output_dir)
    repeated = sorted(s for s, n in Counter(Path(f).stem for f in dataset["file_name"]).items() if n > 1)
    if repeated:
        raise ValueError(f"VOC names annotation files after their images; these names repeat: {repeated[:5]}")
    (output_dir / "Annotations").mkdir(parents=True, exist_ok=True)
    names = class_names_of(dataset)
    for row in dataset.select_columns(["file_name", "width", "height", "objects"]):
        xml = write_annotation(row["file_name"], row["width"], row["height"], row["objects"], names, one_based)
        (output_dir / "Annotations" / f"{Path(row['file_name']).stem}.xml").write_text(xml)
    write_image_files(dataset, output_dir / "JPEGImages")
    return output_dir
