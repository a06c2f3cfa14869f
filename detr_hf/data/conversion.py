"""From a parsed :class:`~detr_hf.data.formats.base.SourceImage` to a dataset row: the per-image work.

This runs inside ``Dataset.from_generator`` (in ``num_proc`` worker processes), one image at a time, so memory stays
flat: the image file is opened for its size and EXIF orientation, decoded cheaply to prove it is readable, and stored
by path (its bytes are embedded once, by ``save_to_disk``/``push_to_hub``). Boxes are moved into the frame a person
sees, clipped, and checked. Issues travel with the row in a ``_issues`` column and dropped images as ``_keep=False``
rows, so the report survives worker processes and dataset caching alike; ``strict`` is applied to them afterwards
(the rows do not depend on it, so strict and lenient runs share their cache).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

import numpy as np
import PIL.Image
import PIL.ImageOps
from datasets import Features, Value

from .formats.base import SourceImage, SourceObject
from .formats.geometry import (
    SWAPPING_ORIENTATIONS,
    clip_box,
    exif_transpose_box,
    is_finite_box,
    scale_box,
    xyxy_to_xywh,
)
from .report import Issue

ISSUES_COLUMN, KEEP_COLUMN = "_issues", "_keep"
# Modes a detector cannot take as they are (RGB conversion would clip 16-bit values): stored as 8-bit instead.
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class RowOptions:
    """What the per-image work needs besides the image; part of the cache key."""

    verify_images: bool = True
    include_difficult: bool = True
    clip_tolerance: float = 1e-3  # pixels; differences below this are float noise, not fixes
    label_of: dict[str, int] = field(default_factory=dict)  # class name -> label
    class_list: str = ""  # the class list as messages show it


def working_features(features: Features) -> Features:
    """The detection features plus the two bookkeeping columns the generator writes."""
    out = features.copy()
    out[ISSUES_COLUMN] = Value("string")
    out[KEEP_COLUMN] = Value("bool")
    return out


class RowIssues:
    """Issues of one row, serialized into its ``_issues`` column."""

    def __init__(self, ann_file: str) -> None:
        self.ann_file, self.items = ann_file, []

    def add(self, kind: str, record: str, message: str, boxes_lost: int = 0) -> None:
        self.items.append(Issue(kind=kind, file=self.ann_file, record=record, message=message, boxes_lost=boxes_lost))

    def to_json(self) -> str:
        return json.dumps([asdict(i) for i in self.items]) if self.items else ""


def _fmt_box(box) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in box) + "]"


def check_objects(
    objects: list[SourceObject],
    width: int,
    height: int,
    issues: RowIssues,
    options: RowOptions,
    orientation_from: tuple[int, int, int] | None = None,
) -> dict[str, list]:
    """The ``objects`` column of one image: boxes in image pixels, clipped, degenerate ones dropped.

    ``orientation_from`` = (EXIF orientation, stored width, stored height) when the source drew its pixel boxes on
    the stored pixels rather than on the image as shown.
    """
    out: dict[str, list] = {k: [] for k in ("id", "area", "bbox", "category", "iscrowd", "difficult", "truncated")}
    for obj in objects:
        label = options.label_of.get(obj.name, -1) if options.label_of else obj.label
        if label < 0:
            issues.add("unknown_class", obj.record, f"class {obj.name!r} is not in {options.class_list}", boxes_lost=1)
            continue
        if obj.difficult and not options.include_difficult:
            issues.add("difficult_excluded", obj.record, "difficult box left out", boxes_lost=1)
            continue
        box = obj.box
        if obj.normalized:
            box = scale_box(box, width, height)
        elif orientation_from is not None:
            box = exif_transpose_box(box, *orientation_from)
        if not is_finite_box(box):
            issues.add("malformed", obj.record, f"box with corners {_fmt_box(box)} is not finite", boxes_lost=1)
            continue
        x0, y0, x1, y1 = box
        if x1 < x0 or y1 < y0:
            issues.add("box_degenerate", obj.record, f"box with corners {_fmt_box(box)} has them swapped", boxes_lost=1)
            continue
        clipped = clip_box(box, width, height)
        changed = max(abs(a - b) for a, b in zip(box, clipped)) > options.clip_tolerance
        if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
            why = "lies outside" if changed else "has no width or height in"
            issues.add(
                "box_degenerate", obj.record, f"box with corners {_fmt_box(box)} {why} the {width}x{height} image", 1
            )
            continue
        if changed:
            issues.add(
                "box_clipped",
                obj.record,
                f"box {_fmt_box(box)} extends beyond the {width}x{height} image; clipped to {_fmt_box(clipped)}",
            )
        x, y, w, h = xyxy_to_xywh(clipped)
        out["id"].append(obj.source_id)
        out["area"].append(obj.area if obj.area is not None and not changed else w * h)
        out["bbox"].append([x, y, w, h])
        out["category"].append(label)
        out["iscrowd"].append(obj.iscrowd)
        out["difficult"].append(obj.difficult)
        out["truncated"].append(obj.truncated)
    return out


def _image_source(unit: SourceImage) -> tuple[io.BufferedIOBase, bytes | None]:
    if unit.path is not None:
        return open(unit.path, "rb"), None
    with open(unit.embedded_in, "rb") as f:  # LabelMe: the image is base64 inside the JSON
        data = base64.b64decode(json.load(f)["imageData"])
    return io.BytesIO(data), data


def _to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """16-bit (and 32-bit) images to 8-bit the way OpenCV reads them (top 8 bits); float images in [0, 1] scaled."""
    array = np.asarray(image)
    if image.mode == "F":
        array = array * 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else array
        return PIL.Image.fromarray(np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8))
    return PIL.Image.fromarray(np.clip(array.astype(np.int64) >> 8, 0, 255).astype(np.uint8))


def open_image(unit: SourceImage, verify: bool) -> tuple[dict, tuple[int, int], int, str | None]:
    """The ``image`` column value, the stored size, the EXIF orientation and a note if the pixels were converted.

    Raises ``OSError``/``ValueError`` (and PIL's errors) when the image does not decode.
    """
    fp, data = _image_source(unit)
    with fp, warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        image = PIL.Image.open(fp)
        size = image.size
        try:
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block: the pixels are still fine
            orientation = 1
        if image.mode in _HIGH_DEPTH_MODES:
            image.load()
            converted = _to_8bit(PIL.ImageOps.exif_transpose(image))
            buffer = io.BytesIO()
            converted.save(buffer, format="PNG")
            name = PurePosixPath(unit.file_name).with_suffix(".png").as_posix()
            note = f"{image.mode} image stored as 8-bit PNG (top 8 bits kept)"
            return {"bytes": buffer.getvalue(), "path": name}, size, orientation, note
        if verify:
            if image.format == "JPEG":
                image.draft(image.mode, (1, 1))  # decode at 1/8 scale: still reads every byte of the stream
            image.load()
    if data is not None:
        return {"bytes": data, "path": unit.file_name}, size, orientation, None
    return {"bytes": None, "path": unit.path}, size, orientation, None


def _dropped_row(unit: SourceImage, issues: RowIssues) -> dict:
    empty = {k: [] for k in ("id", "area", "bbox", "category", "iscrowd", "difficult", "truncated")}
    return {
        "image_id": unit.image_id or 0,
        "image": None,
        "width": 0,
        "height": 0,
        "file_name": unit.file_name,
        "objects": empty,
        ISSUES_COLUMN: issues.to_json(),
        KEEP_COLUMN: False,
    }


def build_row(unit: SourceImage, options: RowOptions) -> dict:
    """One dataset row for ``unit`` (``_keep=False`` when its image does not decode)."""
    issues = RowIssues(unit.ann_file)
    record = unit.record or unit.file_name
    try:
        image_value, (raw_w, raw_h), orientation, note = open_image(unit, options.verify_images)
    except Exception as e:  # PIL raises many types for corrupt data; all mean "does not decode"
        where = unit.path or f"imageData of {unit.embedded_in}"
        issues.add("image_undecodable", record, f"{where} does not decode ({e})", boxes_lost=len(unit.objects))
        return _dropped_row(unit, issues)
    if note:
        issues.add("image_converted", record, note)
    swapped = orientation in SWAPPING_ORIENTATIONS
    width, height = (raw_h, raw_w) if swapped else (raw_w, raw_h)
    orientation_from = None
    declared = unit.declared_size
    if declared is not None and declared != (width, height):
        if swapped and declared == (raw_w, raw_h) and raw_w != raw_h:
            orientation_from = (orientation, raw_w, raw_h)
            issues.add(
                "exif_rotated",
                record,
                f"size {raw_w}x{raw_h} is the stored image's; boxes turned with EXIF orientation {orientation} "
                f"to the {width}x{height} image as shown",
            )
        else:
            issues.add(
                "size_mismatch",
                record,
                f"declared size {declared[0]}x{declared[1]}, but {unit.file_name} is {width}x{height}; "
                "boxes kept in pixels of the image",
            )
    objects = check_objects(unit.objects, width, height, issues, options, orientation_from)
    return {
        "image_id": unit.image_id,
        "image": image_value,
        "width": width,
        "height": height,
        "file_name": unit.file_name,
        "objects": objects,
        ISSUES_COLUMN: issues.to_json(),
        KEEP_COLUMN: True,
    }


SHARD_SIZE = 256  # images per shard: the unit of work handed to a worker process


def make_shards(entries: list[tuple]) -> list[bytes]:
    """Entries (image id, first box id, offset, length, digest), pickled in shards of ``SHARD_SIZE``: compact to
    hold, and cheap for ``datasets`` to hand to worker processes (it pickles arguments with dill, which is ten times
    slower than pickle on many small objects)."""
    return [pickle.dumps(entries[i : i + SHARD_SIZE], protocol=5) for i in range(0, len(entries), SHARD_SIZE)]


def generate_rows(shards: list[bytes], spill: str, options: RowOptions):
    """The generator ``Dataset.from_generator`` runs; ``shards`` are split between the ``num_proc`` workers, each
    image is read back from the ``spill`` file the planning pass wrote."""
    with open(spill, "rb") as f:
        for shard in shards:
            for image_id, first_object_id, offset, length, _ in pickle.loads(shard):
                f.seek(offset)
                unit: SourceImage = pickle.loads(f.read(length))
                unit.image_id = image_id
                for j, obj in enumerate(unit.objects):
                    if obj.source_id is None:
                        obj.source_id = first_object_id + j
                yield build_row(unit, options)
