"""Open Images box CSV: ``ImageID,...,LabelName,...,XMin,XMax,YMin,YMax,...,IsGroupOf,...`` (fractions of the image).

``LabelName`` is a machine id (``/m/01g317``) named by a ``class-descriptions*.csv`` beside it when one is there, else
used as the class name. ``IsGroupOf`` boxes are crowd boxes, ``IsTruncated`` sets ``truncated``. Files named
``train-...``/``validation-...``/``test-...`` are splits. Decimal commas (``"0,358"``) are accepted.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

from ..splits import split_from_text
from .base import ReadContext, SourceData, SourceImage, SourceObject, no_files_error, report_rejected
from .coordinates import parse_number
from .csv_table import (
    OPEN_IMAGES_COLUMNS,
    TABLE_COLUMNS,
    decode_error,
    header_of,
    report_cut_header,
    sniff_dialect,
    table_problem,
)

NAME = "openimages"
ALIASES: tuple[str, ...] = ("open_images",)
_REQUIRED = OPEN_IMAGES_COLUMNS


def find_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.csv") if set(header_of(p)) >= _REQUIRED)


def _class_descriptions(root: Path) -> dict[str, str]:
    names: dict[str, str] = {}
    for path in sorted(root.rglob("*class-descriptions*.csv")):
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                for row in csv.reader(f):
                    if len(row) >= 2:
                        names.setdefault(row[0].strip(), row[1].strip())
        except UnicodeDecodeError as e:
            raise decode_error(path, str(path.relative_to(root)), e) from None
    return names


def _flag(row: list[str], col: dict[str, int], key: str, ctx: ReadContext, ann_file: str, record: str) -> int:
    """A flag column: 1, or 0 (also for -1, "unknown", and an empty cell); any other value is a ``malformed`` fix
    and reads as 0."""
    text = row[col[key]].strip() if key in col else ""
    try:
        value = parse_number(text) if text else 0
    except ValueError:
        value = None
    if value in (-1, 0, 1):
        return int(value == 1)
    ctx.issue("malformed", ann_file, record, f"{key} is {text!r}, not 0, 1 or -1: read as 0")
    return 0


def read_file(path: Path, split: str | None, ctx: ReadContext, names: dict[str, str]) -> list[SourceImage]:
    ann_file = ctx.rel(path)
    try:
        images = _read_rows(path, split, ctx, names, ann_file)
    except UnicodeDecodeError as e:
        raise decode_error(path, ann_file, e) from None
    if not images:
        report_cut_header(path, ann_file, ctx)
    return images


def _read_rows(
    path: Path, split: str | None, ctx: ReadContext, names: dict[str, str], ann_file: str
) -> list[SourceImage]:
    images: dict[str, SourceImage] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, sniff_dialect(f.read(4096)))
        f.seek(0)
        header = [c.strip().lower() for c in next(reader)]
        col = {name: k for k, name in enumerate(header)}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            record = f"line {reader.line_num}"
            if len(row) != len(header):
                ctx.issue("malformed", ann_file, record, f"{len(row)} fields, header has {len(header)}", boxes_lost=1)
                continue
            image_name = row[col["imageid"]].strip()
            image = images.get(image_name)
            if image is None:
                image = images[image_name] = ctx.make_image(image_name, ann_file, base_dirs=(path.parent,), split=split)
            label = row[col["labelname"]].strip()
            try:
                if not label:
                    raise ValueError("empty LabelName")
                x0, x1, y0, y1 = (parse_number(row[col[k]]) for k in ("xmin", "xmax", "ymin", "ymax"))
            except ValueError as e:
                ctx.issue("malformed", ann_file, record, f"unreadable box: {e}", boxes_lost=1)
                continue
            image.objects.append(
                SourceObject(
                    name=names.get(label, label),
                    box=(x0, y0, x1, y1),
                    record=record,
                    normalized=True,
                    iscrowd=_flag(row, col, "isgroupof", ctx, ann_file, record),
                    truncated=_flag(row, col, "istruncated", ctx, ann_file, record),
                )
            )
    return list(images.values())


def read(ctx: ReadContext) -> SourceData:
    files = find_files(ctx.root)
    problem = partial(table_problem, required=_REQUIRED, other_format=TABLE_COLUMNS)
    rejected = report_rejected(ctx, sorted(ctx.root.rglob("*.csv")), files, problem, "an Open Images CSV")
    if not files:
        raise no_files_error(ctx, "no Open Images CSV (ImageID, LabelName, XMin, ...) found", rejected)
    names = _class_descriptions(ctx.root)
    splits = {path: split_from_text(path.stem) if len(files) > 1 else None for path in files}
    return SourceData(images=(image for path, split in splits.items() for image in read_file(path, split, ctx, names)))
