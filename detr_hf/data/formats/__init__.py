"""Annotation formats: one module per format, each with ``read(ctx, **options) -> SourceData``, and detection.

``detect_format(folder)`` looks at the files (names, the first bytes of JSON/XML, CSV headers, label lines) and
returns one format name, or raises naming every candidate it saw when the folder is ambiguous.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..report import DatasetValidationError
from . import coco, csv_table, cvat, labelme, labelme_xml, openimages, voc, yolo
from .base import ReadContext, SourceData

READERS: dict[str, Callable[..., SourceData]] = {
    "coco": coco.read,
    "voc": voc.read,
    "yolo": yolo.read,
    "labelme": labelme.read,
    "labelme_xml": labelme_xml.read,
    "cvat": cvat.read,
    "csv": csv_table.read,
    "openimages": openimages.read,
}
# Formats that are not annotation folders but datasets already in the schema.
DATASET_FORMATS = ("saved", "hub")
ALIASES = {
    "pascal_voc": "voc",
    "pascalvoc": "voc",
    "darknet": "yolo",
    "ultralytics": "yolo",
    "cvat_images": "cvat",
    "coco_json": "coco",
    "open_images": "openimages",
    "labelme3": "labelme_xml",
    "mit_labelme": "labelme_xml",
    "labelme_3_0": "labelme_xml",
    "save_to_disk": "saved",
    "disk": "saved",
}
FORMATS = (*READERS, *DATASET_FORMATS)


def canonical_format(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key != "auto" and key not in FORMATS:
        raise ValueError(f"unknown format {name!r}; choose one of: auto, {', '.join(FORMATS)}")
    return key


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def _yolo_evidence(root: Path) -> int:
    labels = [p for p in yolo.candidate_label_files(root)[:200] if yolo.looks_like_label_file(p)]
    if labels:
        return len(labels)
    has_class_list = any(next(root.rglob(name), None) for name in yolo.CLASS_LIST_FILES)
    return 1 if has_class_list or yolo.find_config(root) is not None else 0


def detect_format(root: str | Path) -> str:
    """The annotation format of a folder (see the module docstring)."""
    root = Path(root)
    if is_saved_dataset(root):
        return "saved"
    if not root.is_dir():
        raise DatasetValidationError(f"{root}: not a folder")
    found = {
        "coco": len(coco.find_files(root)),
        "cvat": len(cvat.find_files(root)),
        "voc": len(voc.find_files(root)),
        "labelme": len(labelme.find_files(root)),
        "labelme_xml": len(labelme_xml.find_files(root)),
        "csv": len(csv_table.find_files(root)),
        "openimages": len(openimages.find_files(root)),
        "yolo": _yolo_evidence(root),
    }
    found = {k: n for k, n in found.items() if n}
    if len(found) == 1:
        return next(iter(found))
    if not found:
        tfrecords = sorted(root.rglob("*.tfrecord")) + sorted(root.rglob("*.record"))
        if tfrecords:
            raise DatasetValidationError(
                f"{root}: only TFRecord files ({tfrecords[0].name}) - TFRecord is not read here; export COCO, VOC or "
                "YOLO from your tool instead"
            )
        raise DatasetValidationError(
            f"{root}: no annotations in a known format (COCO/LabelMe JSON, VOC/CVAT/LabelMe XML, YOLO txt, CSV) found"
        )
    listing = ", ".join(f"{k} ({n} file{'s' if n > 1 else ''})" for k, n in found.items())
    raise DatasetValidationError(f"{root}: looks like several formats: {listing}; pass format= to choose one")


__all__ = ["FORMATS", "READERS", "ReadContext", "SourceData", "canonical_format", "detect_format", "is_saved_dataset"]
