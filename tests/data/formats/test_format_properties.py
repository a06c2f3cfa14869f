"""Property-based tests (hypothesis) of the annotation readers and exporters.

1. Every reader gives back a generated dataset exactly (within the format's precision), with no fix in its report;
   for the formats with an exporter, reading the export gives the same dataset again.
2. One corruption of a valid folder (a file cut short, a number replaced by a wrong type or an out-of-range value,
   invalid UTF-8, a hostile image path, a deleted image) is either reported as a fix naming the file, or refused
   with a ``DatasetValidationError`` naming it: never another exception, never a silent change, and never a file
   from outside the dataset folder in the dataset.

Each example writes its own tiny folder (images of 8-64 pixels) in a temporary directory. The examples are fixed
(``derandomize=True``, no example database), so a run in CI sees the same ones as a run here.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path, PurePosixPath

import datasets
import format_strategies as fs
import pytest
from datasets import DatasetDict, Image
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from detr_hf.data import (
    ConversionReport,
    DatasetValidationError,
    class_names_of,
    export_coco,
    export_csv,
    export_voc,
    export_yolo,
    load_detection_dataset,
)

settings.register_profile(
    "detr_hf_formats",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # shrinking replays a load per step (minutes); DETR_HF_SHRINK=1 turns it on to find a minimal failing example
    phases=list(Phase) if os.environ.get("DETR_HF_SHRINK") else [Phase.explicit, Phase.generate],
)
PROFILE = settings.get_profile("detr_hf_formats")

EXPORTERS = ("coco", "voc", "yolo", "csv")
OUTSIDE_SIZE = (7, 5)  # no generated image has this size: a row of this size is the outside image


def load(root: Path, fmt: str, cache: Path, **kwargs) -> tuple[DatasetDict, ConversionReport]:
    bars = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return load_detection_dataset(
            root, format=fmt, cache_dir=str(cache), val_fraction=0, verbose=False, return_report=True, num_proc=None,
            **kwargs,
        )  # fmt: skip
    finally:
        if bars:
            datasets.enable_progress_bars()


def rows_of(dataset: DatasetDict) -> tuple[list[fs.Row], list[str]]:
    """Every split's rows in the form of :func:`format_strategies.truth_rows`, and the class names."""
    rows, names = [], []
    for split in dataset.values():
        names = class_names_of(split)
        for r in split.select_columns(["file_name", "width", "height", "objects"]):
            o = r["objects"]
            boxes = tuple(
                (names[c], x, y, x + w, y + h, int(crowd), int(difficult))
                for c, (x, y, w, h), crowd, difficult in zip(o["category"], o["bbox"], o["iscrowd"], o["difficult"])
            )
            rows.append((PurePosixPath(r["file_name"]).name, r["width"], r["height"], boxes))
    return sorted(rows, key=lambda r: r[0]), names


def fixes_of(report: ConversionReport) -> list[str]:
    return [str(i) for i in report.issues if i.is_fix]


def assert_reads_the_truth(dataset: DatasetDict, report: ConversionReport, source: fs.Source) -> None:
    rows, names = rows_of(dataset)
    assert not fixes_of(report), f"fixes in a valid {source.fmt} folder: {fixes_of(report)}"
    assert names == source.class_names
    assert fs.differences(rows, source.rows) is None, fs.differences(rows, source.rows)
    for split in dataset.values():
        images_root = Path(report.source)
        for name in split["file_name"]:
            assert (images_root / name).is_file() or source.embedded, f"{name} is not a file under {images_root}"


# -- 1. exact reading and round trips ------------------------------------------------------------------------------
def export(fmt: str, dataset, out: Path, source_root: Path) -> Path | None:
    """Export ``dataset`` to ``out``; the images folder to read it with (None: the export holds its images)."""
    if fmt == "coco":
        export_coco(dataset, out / "annotations.json")
        return source_root
    if fmt == "csv":
        export_csv(dataset, out / "labels.csv")
        return source_root
    {"voc": export_voc, "yolo": export_yolo}[fmt](dataset, out)
    return None


@pytest.mark.parametrize("fmt", EXPORTERS)
@settings(PROFILE, max_examples=15)
@given(gen=fs.gen_datasets(), data=st.data())
def test_export_round_trip_gives_the_same_dataset(fmt, gen, data):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = fs.WRITERS[fmt](gen, tmp / "source", data.draw)
        first, report = load(source.root, fmt, tmp / "cache")
        assert_reads_the_truth(first, report, source)
        images_dir = export(fmt, first["train"], tmp / "export", source.root)
        second, report = load(tmp / "export", fmt, tmp / "cache", images_dir=images_dir)
        assert not fixes_of(report), f"fixes reading the {fmt} export: {fixes_of(report)}"
        (rows1, names1), (rows2, names2) = rows_of(first), rows_of(second)
        if fmt == "voc":  # VOC files carry no class list: an export keeps the names on boxes, not the list's order
            names1 = sorted({box[0] for row in rows1 for box in row[3]})
            names2 = sorted(names2)
        assert names2 == names1
        assert fs.differences(rows2, rows1) is None, fs.differences(rows2, rows1)


@pytest.mark.parametrize("fmt", ("labelme", "cvat", "openimages"))
@settings(PROFILE, max_examples=10)
@given(gen=fs.gen_datasets(), data=st.data())
def test_reader_gives_the_generated_dataset(fmt, gen, data):
    with tempfile.TemporaryDirectory() as tmp:
        source = fs.WRITERS[fmt](gen, Path(tmp) / "source", data.draw)
        assert_reads_the_truth(*load(source.root, fmt, Path(tmp) / "cache"), source)


# -- 2. corruptions ---------------------------------------------------------------------------------------------------
def write_outside_images(tmp: Path) -> Path:
    """``outside.png`` in the two folders above the dataset (``tmp/up/dataset``); returns the upper one."""
    for folder in (tmp, tmp / "up"):
        folder.mkdir(parents=True, exist_ok=True)
        PILImage.new("RGB", OUTSIDE_SIZE, (255, 0, 0)).save(folder / fs.OUTSIDE)
    return tmp / fs.OUTSIDE


def _safe_name(name: str) -> bool:
    text = name.replace("\\", "/")
    return not (text.startswith("/") or re.match(r"^[A-Za-z]:", text) or ".." in PurePosixPath(text).parts)


def assert_nothing_from_outside(dataset: DatasetDict, root: Path) -> None:
    root_path = os.path.realpath(root)
    for split in dataset.values():
        rows = split.select_columns(["file_name", "width", "height", "image"]).cast_column("image", Image(decode=False))
        for r in rows:
            where = f"record {r['file_name']!r}"
            assert (r["width"], r["height"]) != OUTSIDE_SIZE, f"{where} is the image outside the dataset folder"
            assert _safe_name(r["file_name"]), f"{where}: file_name leaves the dataset folder"
            if r["image"]["bytes"] is None:
                path = os.path.realpath(r["image"]["path"])
                assert path.startswith(root_path + os.sep), f"{where} reads {path}, outside {root_path}"


def check_outcome(source: fs.Source, corruption: fs.Corruption, cache: Path) -> None:
    """The contract for a corrupted folder (see the module docstring and ``format_strategies.Corruption``)."""
    try:
        dataset, report = load(source.root, source.fmt, cache)
    except DatasetValidationError as e:
        assert any(n in str(e) for n in corruption.names), f"the error names none of {corruption.names}: {e}"
        return
    assert_nothing_from_outside(dataset, source.root)
    if corruption.expect == "any":
        return
    if corruption.accountable:
        generated = sum(len(r[3]) for r in source.rows)
        assert report.boxes_read == generated, (
            f"boxes unaccounted for: read {report.boxes_read} (kept {report.num_boxes} + lost {report.boxes_lost}), "
            f"the files hold {generated}"
        )
    fixes = fixes_of(report)
    if fixes:
        assert any(n in f for f in fixes for n in corruption.names), f"no fix names {corruption.names}: {fixes}"
        return
    rows, names = rows_of(dataset)
    change = fs.differences(rows, source.rows)
    if names != source.class_names:
        change = f"class names {names} != {source.class_names}"
    assert change is None, f"silent change (no fix in the report): {change}"
    assert corruption.expect != "noticed", "unnoticed: the same dataset, and no fix in the report"


CORRUPTIONS = {
    "truncate": fs.truncate,
    "number": fs.replace_number,
    "bytes": fs.invalid_bytes,
    "hostile_path": fs.hostile_path,
    "missing_image": fs.delete_image,
}


@pytest.mark.parametrize("fmt", tuple(fs.WRITERS))
@pytest.mark.parametrize("kind", tuple(CORRUPTIONS))
@settings(PROFILE, max_examples=12)
@given(gen=fs.gen_datasets(min_images=2, stems=fs.PLAIN_STEMS), data=st.data())
def test_corruption_is_reported_or_refused(kind, fmt, gen, data):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        layout = "list" if (fmt, kind) == ("yolo", "hostile_path") else None  # YOLO folders name no image
        source = fs.WRITERS[fmt](gen, tmp / "up" / "dataset", data.draw, layout)
        outside = write_outside_images(tmp)
        if kind == "hostile_path":
            corruption = fs.hostile_path(source, data.draw, outside)
        else:
            corruption = CORRUPTIONS[kind](source, data.draw)
        if corruption is None:
            return  # nothing to corrupt, or a change that leaves the same file
        note(f"corruption: {corruption.what} (expect {corruption.expect})")
        check_outcome(source, corruption, tmp / "cache")
