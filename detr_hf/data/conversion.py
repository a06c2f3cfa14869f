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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

import PIL.Image
from datasets import Features, Value

from ..box_ops import xyxy_to_xywh
from ..imaging import HIGH_DEPTH_MODES, SWAPPING_ORIENTATIONS, exif_orientation, high_depth_to_8bit, upright
from .formats.base import IGNORE_ALL_CLASSES, SourceImage, SourceObject
from .formats.coordinates import clip_box, exif_transpose_box, is_finite_box, scale_box
from .report import Issue

ISSUES_COLUMN, KEEP_COLUMN = "_issues", "_keep"
# The largest image PIL opens by default (it warns above half this, at PIL.Image.MAX_IMAGE_PIXELS, and refuses beyond).
DEFAULT_MAX_IMAGE_PIXELS = 2 * PIL.Image.MAX_IMAGE_PIXELS if PIL.Image.MAX_IMAGE_PIXELS else None


@dataclass(frozen=True)
class RowOptions:
    """What the per-image work needs besides the image; part of the cache key."""

    verify_images: bool = True
    include_difficult: bool = True
    clip_tolerance: float = 1e-3  # pixels; differences below this are float noise, not fixes
    label_of: dict[str, int] = field(default_factory=dict)  # class name -> label
    class_list: str = ""  # the class list as messages show it
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS  # larger images are reported undecodable; None: no limit


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
        if obj.name == IGNORE_ALL_CLASSES and obj.iscrowd and options.label_of:
            # The schema's crowd regions belong to one class: a region to ignore for all of them is one per class.
            labels = sorted(set(options.label_of.values()))
        else:
            labels = [options.label_of.get(obj.name, -1) if options.label_of else obj.label]
        _check_object(obj, labels, width, height, issues, options, orientation_from, out)
    return out


def _check_object(
    obj: SourceObject,
    labels: list[int],
    width: int,
    height: int,
    issues: RowIssues,
    options: RowOptions,
    orientation_from: tuple[int, int, int] | None,
    out: dict[str, list],
) -> None:
    """Append ``obj``'s checked box to ``out`` once for each of ``labels``, or record why it is dropped."""
    if labels[0] < 0:
        issues.add("unknown_class", obj.record, f"class {obj.name!r} is not in {options.class_list}", boxes_lost=1)
        return
    if obj.difficult and not options.include_difficult:
        issues.add("difficult_excluded", obj.record, "difficult box left out", boxes_lost=1)
        return
    box = obj.box
    if obj.normalized:
        box = scale_box(box, width, height)
    elif orientation_from is not None:
        box = exif_transpose_box(box, *orientation_from)
    if not is_finite_box(box):
        issues.add("malformed", obj.record, f"box with corners {_fmt_box(box)} is not finite", boxes_lost=1)
        return
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        issues.add("box_degenerate", obj.record, f"box with corners {_fmt_box(box)} has them swapped", boxes_lost=1)
        return
    clipped = clip_box(box, width, height)
    changed = max(abs(a - b) for a, b in zip(box, clipped)) > options.clip_tolerance
    if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
        why = "lies outside" if changed else "has no width or height in"
        issues.add(
            "box_degenerate", obj.record, f"box with corners {_fmt_box(box)} {why} the {width}x{height} image", 1
        )
        return
    if changed:
        issues.add(
            "box_clipped",
            obj.record,
            f"box {_fmt_box(box)} extends beyond the {width}x{height} image; clipped to {_fmt_box(clipped)}",
        )
    x, y, w, h = xyxy_to_xywh(clipped)
    for label in labels:
        out["id"].append(obj.source_id)
        out["area"].append(obj.area if obj.area is not None and not changed else w * h)
        out["bbox"].append([x, y, w, h])
        out["category"].append(label)
        out["iscrowd"].append(obj.iscrowd)
        out["difficult"].append(obj.difficult)
        out["truncated"].append(obj.truncated)


def _image_source(unit: SourceImage) -> tuple[io.BufferedIOBase, bytes | None]:
    if unit.path is not None:
        return open(unit.path, "rb"), None
    with open(unit.embedded_in, "rb") as f:  # LabelMe: the image is base64 inside the JSON
        data = base64.b64decode(json.load(f)["imageData"])
    return io.BytesIO(data), data


@contextmanager
def pil_pixel_limit_lifted() -> Iterator[None]:
    """PIL's global pixel limit lifted for the block (restored after), so :func:`check_pixels` can apply ours.
    PIL reads its limit at ``open`` and again while decoding some formats (GIF frames)."""
    saved = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = saved


def check_pixels(size: tuple[int, int], max_image_pixels: int | None) -> None:
    """Raise ``ValueError`` when an image of ``size`` has more than ``max_image_pixels`` pixels."""
    w, h = size
    if max_image_pixels is not None and w * h > max_image_pixels:
        raise ValueError(
            f"{w}x{h} = {w * h} pixels is more than max_image_pixels={max_image_pixels}; pass a larger "
            "max_image_pixels (None for no limit) to accept it"
        )


def read_image(
    unit: SourceImage, verify: bool, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[dict, tuple[int, int], int, str | None]:
    """The ``image`` column value, the stored size, the EXIF orientation and a note if the pixels were converted.

    Raises ``OSError``/``ValueError`` (and PIL's errors) when the image does not decode or has more pixels than
    ``max_image_pixels``.
    """
    fp, data = _image_source(unit)
    with fp, pil_pixel_limit_lifted():
        image = PIL.Image.open(fp)
        size = image.size
        check_pixels(size, max_image_pixels)
        orientation = exif_orientation(image)
        if image.mode in HIGH_DEPTH_MODES:
            image.load()
            converted = high_depth_to_8bit(upright(image))
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
        image_value, (raw_w, raw_h), orientation, note = read_image(
            unit, options.verify_images, options.max_image_pixels
        )
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
    if orientation != 1 and orientation_from is None:
        issues.add("exif_orientation", record, _orientation_note(orientation, (raw_w, raw_h), declared))
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


def _orientation_note(orientation: int, stored: tuple[int, int], declared: tuple[int, int] | None) -> str:
    """Why the boxes of an image with EXIF ``orientation`` were taken on the image as shown, not as stored."""
    raw_w, raw_h = stored
    width, height = (raw_h, raw_w) if orientation in SWAPPING_ORIENTATIONS else (raw_w, raw_h)
    if declared == (width, height) and (width, height) != (raw_w, raw_h):
        why = "the declared size is the shown image's"
    elif declared is not None and declared != (width, height):
        why = "the declared size matches neither frame"
    else:
        why = "assumed: nothing in the annotations tells which frame the boxes were drawn on"
    return (
        f"EXIF orientation {orientation}: boxes taken on the image as shown ({width}x{height}), not on the stored "
        f"{raw_w}x{raw_h} pixels ({why})"
    )


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
