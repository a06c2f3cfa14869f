"""CSV with one box per row: ``filename,width,height,class,xmin,ymin,xmax,ymax`` (read and write).

Corners are continuous pixel coordinates; ``width``/``height`` are optional. A row with an empty class and empty
corners lists an image without boxes (a negative). Several CSV files are splits named after their files
(``train.csv``, ``val.csv``). The delimiter (``,``, ``;`` or tab) is sniffed and a decimal comma is accepted.
Files are read as UTF-8, with or without the byte-order mark Excel's "CSV UTF-8" writes; any other encoding raises,
naming the line, rather than turning ``café`` into ``caf\ufffd``.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

from datasets import Dataset

from ...box_ops import xywh_to_xyxy
from ..report import DatasetValidationError
from ..schema import class_names_of
from ..splits import split_from_text
from .base import ReadContext, SourceData, SourceImage, SourceObject, no_files_error, report_rejected
from .coordinates import format_number, parse_number, parse_size
from .writing import check_crowd_policy, keep_object, safe_relative

NAME = "csv"
ALIASES: tuple[str, ...] = ()
COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
_REQUIRED = {"filename", "class", "xmin", "ymin", "xmax", "ymax"}
TABLE_COLUMNS = _REQUIRED
OPEN_IMAGES_COLUMNS = {"imageid", "labelname", "xmin", "xmax", "ymin", "ymax"}  # read by .openimages


def sniff_dialect(head: str) -> type[csv.Dialect] | csv.Dialect:
    try:
        return csv.Sniffer().sniff(head.splitlines()[0] if head else "", delimiters=",;\t")
    except csv.Error:
        return csv.excel


def header_of(path: Path) -> list[str]:
    """The header row, lower-cased, for detection: a byte-order mark is skipped and bytes that are not UTF-8 are
    replaced here (reading the file then names the line that holds them)."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        head = f.read(4096)
    rows = list(csv.reader(head.splitlines()[:1], sniff_dialect(head)))
    return [c.strip().lower() for c in rows[0]] if rows else []


def decode_error(path: Path, ann_file: str, error: UnicodeDecodeError) -> DatasetValidationError:
    """The error for a CSV that is not UTF-8, naming the first line that is not (found by reading the bytes again)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return DatasetValidationError(
                    f"{ann_file}: line {number}: byte {line[e.start]:#04x} at column {e.start + 1} is not UTF-8 "
                    f"({e.reason}); save the file as UTF-8 (Excel: 'CSV UTF-8')"
                )
    return DatasetValidationError(f"{ann_file}: not UTF-8 ({error}); save the file as UTF-8")


def table_problem(path: Path, required: set[str], other_format: set[str]) -> str | None:
    """Why a ``.csv`` file that is not read is a broken table of this format (empty, a header that is not UTF-8, or
    that lacks some of the ``required`` columns while it has others), else None (a table of another kind, such as
    one with every column of ``other_format``)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head.strip():
        return "empty file"
    first = head.split(b"\n", 1)[0]
    try:
        first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if len(first) < len(head) or len(head) < 4096:  # not a multi-byte character cut by the 4096-byte read
            return f"the header row is not UTF-8 ({e.reason} at byte {e.start})"
    header = set(header_of(path))
    if header >= other_format:
        return None
    missing = sorted(required - header)
    if len(required & header) >= 2:
        return f"the header lacks the columns {', '.join(missing)}"
    if b"\n" not in head and len(head) < 4096:
        return "a single line, no header row with the columns " + ", ".join(sorted(required))
    return None


def report_cut_header(path: Path, ann_file: str, ctx: ReadContext) -> None:
    """A table that is one header row with no line break after it was most likely cut short: a ``malformed`` fix."""
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    if b"\n" not in data and len(data) < (1 << 16):
        ctx.issue("malformed", ann_file, "line 1", "only a header row, with no line break after it: file cut short?")


def find_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.csv") if set(header_of(p)) >= _REQUIRED)


def read_file(path: Path, split: str | None, ctx: ReadContext) -> list[SourceImage]:
    """The images one CSV lists. The file must be UTF-8 (a byte-order mark, as Excel writes, is fine)."""
    ann_file = ctx.rel(path)
    try:
        images = _read_rows(path, split, ctx, ann_file)
    except UnicodeDecodeError as e:
        raise decode_error(path, ann_file, e) from None
    if not images:
        report_cut_header(path, ann_file, ctx)
    return images


def _read_rows(path: Path, split: str | None, ctx: ReadContext, ann_file: str) -> list[SourceImage]:
    images: dict[str, SourceImage] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, sniff_dialect(f.read(4096)))
        f.seek(0)
        header = [c.strip().lower() for c in next(reader)]
        col = {name: header.index(name) for name in COLUMNS if name in header}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            record = f"line {reader.line_num}"
            if len(row) > len(header):
                ctx.issue("malformed", ann_file, record, f"{len(row)} fields, header has {len(header)}", boxes_lost=1)
                continue
            row += [""] * (len(header) - len(row))  # "a.jpg,640,480" lists a negative without trailing commas
            name = row[col["filename"]].strip()
            image = images.get(name)
            if image is None:
                size = parse_size(row[col["width"]], row[col["height"]]) if "width" in col and "height" in col else None
                image = images[name] = ctx.make_image(
                    name, ann_file, base_dirs=(path.parent,), declared_size=size, split=split
                )
            label = row[col["class"]].strip()
            corners = [row[col[k]].strip() for k in ("xmin", "ymin", "xmax", "ymax")]
            if not label and not any(corners):
                continue  # an image without boxes
            try:
                if not label:
                    raise ValueError("empty class")
                box = tuple(parse_number(c) for c in corners)
            except ValueError as e:
                ctx.issue("malformed", ann_file, record, f"unreadable box: {e}", boxes_lost=1)
                continue
            image.objects.append(SourceObject(name=label, box=box, record=record))
    return list(images.values())


def read(ctx: ReadContext) -> SourceData:
    files = find_files(ctx.root)
    problem = partial(table_problem, required=_REQUIRED, other_format=OPEN_IMAGES_COLUMNS)
    rejected = report_rejected(ctx, sorted(ctx.root.rglob("*.csv")), files, problem, "a CSV table")
    if not files:
        raise no_files_error(ctx, f"no CSV with columns {','.join(COLUMNS)} found", rejected)
    splits = {path: split_from_text(path.stem) if len(files) > 1 else None for path in files}
    for path, split in splits.items():
        if len(files) > 1 and split is None:
            raise DatasetValidationError(
                f"{ctx.root}: several CSV files, and {path.name} names no split (train/val/test)"
            )
    return SourceData(images=(image for path, split in splits.items() for image in read_file(path, split, ctx)))


def export_csv(dataset: Dataset, path: str | Path, *, crowd: str = "refuse") -> Path:
    """Write ``dataset`` as one UTF-8 CSV (a negative image gets one row with empty class and corners).

    The format cannot mark a crowd (ignore) region: ``crowd="refuse"`` raises when the dataset has one, ``"drop"``
    leaves them out and ``"as_object"`` writes them as ordinary boxes. A ``file_name`` that would point outside the
    CSV's folder (``../x.png``, ``/abs/x.png``) raises before anything is written.
    """
    path = Path(path)
    for i, name in enumerate(dataset["file_name"]):
        safe_relative(name, f"record {i}")
    check_crowd_policy(dataset, crowd, "CSV")
    path.parent.mkdir(parents=True, exist_ok=True)
    names = class_names_of(dataset)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in dataset.select_columns(["file_name", "width", "height", "objects"]):
            objects = row["objects"]
            kept = [j for j in range(len(objects["bbox"])) if keep_object(objects.get("iscrowd"), j, crowd)]
            if not kept:
                writer.writerow([row["file_name"], row["width"], row["height"], "", "", "", "", ""])
            for j in kept:
                corners = [format_number(v) for v in xywh_to_xyxy(objects["bbox"][j])]
                writer.writerow(
                    [row["file_name"], row["width"], row["height"], names[objects["category"][j]], *corners]
                )
    return path


export = export_csv  # the registry's name for it (formats.export_dataset)
