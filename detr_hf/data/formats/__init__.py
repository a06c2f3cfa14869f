"""Annotation formats: one module per format, registered in :data:`FORMAT_MODULES`; and format detection.

A format module defines (see :class:`~detr_hf.data.formats.base.AnnotationFormat`):

- ``NAME``: the format's name (the ``format=`` value), and ``ALIASES``: other spellings accepted for it;
- ``find_files(root)``: the files under ``root`` that show the folder is in this format (detection counts them);
- ``read(ctx, **options) -> SourceData``: parse the annotations (never the pixels) of ``ctx.root``;
- optionally ``export(dataset, destination, **options)``: write a dataset in the format.

Adding a format is adding its module to :data:`FORMAT_MODULES`. ``detect_format(folder)`` asks every module for its
files and returns the one format that has some, or raises naming every candidate it saw when the folder is ambiguous.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from ..report import DatasetValidationError
from . import coco, csv_table, cvat, labelme, labelme_xml, openimages, voc, yolo
from .base import ReadContext, SourceData

FORMAT_MODULES: tuple[ModuleType, ...] = (coco, voc, yolo, labelme, labelme_xml, cvat, csv_table, openimages)
# Formats that are not annotation folders but datasets already in the schema.
DATASET_FORMATS = ("saved", "hub")
_DATASET_ALIASES = {"save_to_disk": "saved", "disk": "saved"}


def _registered(modules: tuple[ModuleType, ...]) -> dict[str, ModuleType]:
    """Format name -> module, checking that each module defines what a format must."""
    out = {}
    for module in modules:
        missing = [name for name in ("NAME", "ALIASES", "find_files", "read") if not hasattr(module, name)]
        if missing:
            raise TypeError(f"format module {module.__name__} does not define {missing}")
        if module.NAME in out:
            raise TypeError(f"format {module.NAME!r} is registered twice")
        out[module.NAME] = module
    return out


REGISTRY = _registered(FORMAT_MODULES)
READERS: dict[str, Callable[..., SourceData]] = {name: module.read for name, module in REGISTRY.items()}
ALIASES = {alias: module.NAME for module in FORMAT_MODULES for alias in module.ALIASES} | _DATASET_ALIASES
FORMATS = (*REGISTRY, *DATASET_FORMATS)


def canonical_format(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key != "auto" and key not in FORMATS:
        raise ValueError(f"unknown format {name!r}; choose one of: auto, {', '.join(FORMATS)}")
    return key


def reader_of(name: str) -> Callable[..., SourceData]:
    """The ``read`` function of the annotation format ``name`` (any spelling :func:`canonical_format` accepts)."""
    key = canonical_format(name)
    if key not in REGISTRY:
        raise ValueError(f"{name!r} is not an annotation format; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[key].read


def export_dataset(dataset: Any, format: str, destination: str | Path, **options: Any) -> Any:
    """Write ``dataset`` in the annotation format ``format`` (``coco``, ``voc``, ``yolo``, ``csv``) to
    ``destination``; ``options`` go to that format's exporter (e.g. :func:`~.coco.export_coco`)."""
    key = canonical_format(format)
    export = getattr(REGISTRY.get(key), "export", None)
    if export is None:
        writable = [name for name, module in REGISTRY.items() if hasattr(module, "export")]
        raise ValueError(f"cannot export to {format!r}; formats with an exporter: {', '.join(writable)}")
    return export(dataset, destination, **options)


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def detect_format(root: str | Path) -> str:
    """The annotation format of a folder (see the module docstring)."""
    root = Path(root)
    if is_saved_dataset(root):
        return "saved"
    if not root.is_dir():
        raise DatasetValidationError(f"{root}: not a folder")
    found = {name: len(module.find_files(root)) for name, module in REGISTRY.items()}
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


__all__ = [
    "FORMATS",
    "FORMAT_MODULES",
    "READERS",
    "ReadContext",
    "SourceData",
    "canonical_format",
    "detect_format",
    "export_dataset",
    "is_saved_dataset",
    "reader_of",
]
