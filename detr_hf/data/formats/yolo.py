"""YOLO txt: one ``class cx cy w h`` line per box (fractions of the image), one label file per image; read and write.

Layouts understood: Ultralytics (``data.yaml`` with ``names`` and ``train``/``val``/``test`` folders or image lists,
labels under ``labels/`` beside ``images/``), Roboflow (``train/images``, ``valid/images``, ... each with its
``labels/``), Darknet (``obj.data``, ``obj.names``, ``train.txt``), and a flat folder of images and label files with
``classes.txt``. Segment lines (``class x1 y1 x2 y2 ...``) are read as their enclosing box.

An image's label file is looked for where it belongs to that image alone: ``.../images/<split>/x.jpg`` ->
``.../labels/<split>/x.txt`` (the last ``images`` folder becomes ``labels``, as Ultralytics does), beside the image, or
where a list file names the image. Failing that, the only label file of that stem in the image's split (or in a
folder naming no split) is taken, and noted; never one in another split's folder. An image without a label file is a
negative; a label file claimed by two images is read for the first only; a label file without an image is reported.
Split folders beside the ones a config lists (Roboflow's ``test/`` when ``data.yaml`` names only ``train`` and
``val``) are read as their split unless ``extra_splits=False``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import yaml
from datasets import Dataset

from ...box_ops import cxcywh_to_xyxy, xywh_to_xyxy, xyxy_to_cxcywh
from ..report import DatasetValidationError
from ..schema import Category, class_names_of, get_category_mapping
from ..splits import split_from_text
from .base import ReadContext, SourceData, SourceImage, SourceObject
from .coordinates import flat_points_bounds, parse_number
from .writing import check_crowd_policy, keep_object, safe_join, write_image_files
from .yolo_layout import (
    CLASS_LIST_FILES,
    LabelIndex,
    Listed,
    YoloConfig,
    box_line_class,
    candidate_label_files,
    count_lines,
    find_config,
    has_box_line,
    images_of_split,
    looks_like_label_file,
    read_text,
    sibling_split_folders,
    swap_folder,
    walk_images,
)

NAME = "yolo"
ALIASES: tuple[str, ...] = ("darknet", "ultralytics")


def find_files(root: Path) -> list:
    """Evidence of a YOLO folder: its label files (among the first 200 candidates), else its class list or config."""
    labels = [p for p in candidate_label_files(root)[:200] if looks_like_label_file(p)]
    if labels:
        return labels
    class_list = next((p for name in CLASS_LIST_FILES for p in root.rglob(name)), None)
    config = class_list or find_config(root)
    return [config] if config is not None else []


def _class_index(token: str) -> int:
    value = parse_number(token)
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise ValueError(f"class {token!r} is not a non-negative integer")
    return int(value)


def parse_label_file(
    path: str | Path, ann_file: str, ctx: ReadContext, categories: dict[int, str]
) -> list[SourceObject]:
    objects = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        record = f"line {n}"
        try:
            index = _class_index(tokens[0])
            values = [parse_number(t) for t in tokens[1:]]
            bad = next((t for t, v in zip(tokens[1:], values) if not math.isfinite(v)), None)
            if bad is not None:
                raise ValueError(f"coordinate {bad!r} is not a finite number")
            if len(values) == 4:
                box, polygon = cxcywh_to_xyxy(values), False
            elif len(values) >= 6 and len(values) % 2 == 0:
                box, polygon = flat_points_bounds(values), True
            else:
                raise ValueError(f"expected 'class cx cy w h' (or a segment), got {len(tokens)} values")
        except ValueError as e:
            ctx.issue("malformed", ann_file, record, f"{e}: {line.strip()!r}", boxes_lost=1)
            continue
        if index not in categories:
            ctx.issue("unknown_class", ann_file, record, f"class index {index} is not in the class list", boxes_lost=1)
            continue
        if polygon:
            ctx.issue("shape_to_box", ann_file, record, "segment read as its enclosing box")
        objects.append(SourceObject(name=categories[index], box=box, record=record, normalized=True))
    return objects


def read(ctx: ReadContext, *, extra_splits: bool = True) -> SourceData:
    """Read a YOLO folder (see the module docstring for the layouts).

    ``extra_splits=False`` leaves out split folders the config does not list (reported as ``split_skipped``).
    """
    config = YoloConfig(ctx.root)
    folders = {split: [config.resolve(split, e) for e in entries] for split, entries in config.splits.items()}
    named = [p for p in (config.class_list, *(f for found in folders.values() for f in found)) if p and p.is_file()]
    labels = LabelIndex(candidate_label_files(ctx.root, named), ctx.root)
    if config.splits:
        for split, found in sibling_split_folders(folders, ctx.root).items():
            for images in found:
                _extra_split(images, split, extra_splits, config, labels, ctx)
            if extra_splits:
                folders[split] = found
        listed, origins = [], {}
        for split, found in folders.items():
            for p, name, origin in images_of_split(found, config, ctx, split):
                if p is None and origin is not None:
                    origins[len(listed)] = origin
                listed.append((p, name, split))
    else:
        origins = {}
        listed = []
        for p in ctx.index.all_images():
            parts = ctx.file_name(p).split("/")[:-1]
            split = next((s for s in map(split_from_text, reversed(parts)) if s), None)
            listed.append((p, None, split))
    categories = config.categories
    if categories is None:
        found_classes = (box_line_class(line) for path in sorted(labels.files) for line in read_text(path).splitlines())
        highest = max((c for c in found_classes if c is not None), default=-1)
        categories = [Category(name=str(i), source_id=i) for i in range(highest + 1)]
        ctx.issue(
            "class_list_missing", ctx.rel(ctx.root), "", "no data.yaml, classes.txt or obj.names: classes named 0..N-1"
        )
    by_index = {c.source_id: c.name for c in categories}
    matched = labels.match(listed)
    images = _images(listed, matched, labels, by_index, ctx, config, origins)
    return SourceData(images=images, categories=categories)


def _extra_split(
    images: Path, split: str, read_it: bool, config: YoloConfig, labels: LabelIndex, ctx: ReadContext
) -> None:
    """Note a split folder the config does not list, or report it skipped with what it holds."""
    where, config_name = ctx.rel(images), ctx.rel(config.path)
    if read_it:
        ctx.report.notes.append(
            f"{where}: not listed in {config_name}, read as split {split!r} (extra_splits=False leaves it out)"
        )
        return
    skipped = labels.remove_under(swap_folder(os.path.abspath(images), "images", "labels"))
    boxes = sum(count_lines(p) for p in skipped)
    ctx.issue("split_skipped", where, "",
              f"split folder not listed in {config_name} left out (extra_splits=False): "
              f"{len(walk_images(images))} images, {len(skipped)} label files, {boxes} boxes",
              boxes_lost=boxes)  # fmt: skip


def _images(
    listed: list[Listed],
    matched: list[tuple[str | None, bool]],
    labels: LabelIndex,
    by_index: dict[int, str],
    ctx: ReadContext,
    config: YoloConfig,
    origins: dict[int, tuple[str, str]],
) -> Iterator[SourceImage]:
    """The images listed, with their labels; a missing image is located by the list file and line naming it."""
    for k, ((path, name, split), (label, by_stem)) in enumerate(zip(listed, matched)):
        if path is None:
            ann_file, record = origins.get(k, (name, ""))
            image = SourceImage(file_name=name.replace("\\", "/"), ann_file=ann_file, record=record, split=split)
        else:
            file_name = ctx.file_name(path)
            image = SourceImage(file_name=file_name, ann_file=file_name, path=path, split=split, stat=ctx.stat(path))
        if label is not None:
            _attach_label(image, label, by_stem, labels, by_index, ctx)
        yield image
    for path in sorted(labels.files - labels.claimed.keys()):
        _report_orphan(path, ctx, config)


def _attach_label(
    image: SourceImage, label: str, by_stem: bool, labels: LabelIndex, by_index: dict[int, str], ctx: ReadContext
) -> None:
    """Read ``label`` into ``image``, unless another image already took it (then report it as ambiguous)."""
    ann_file = ctx.rel(label)
    first = labels.claimed.get(label)
    if first is None:
        image.ann_file = ann_file
        image.objects = parse_label_file(label, ann_file, ctx, by_index)
        labels.claimed[label] = (image.file_name, len(image.objects))
        if by_stem:
            ctx.issue("label_matched_by_stem", ann_file, "", f"read for {image.file_name} (none beside it)")
    elif first[0] != image.file_name:  # the same image listed twice is reported by the loader as a duplicate
        ctx.issue("label_ambiguous", ann_file, "",
                  f"matches {first[0]} and {image.file_name}; read for {first[0]} only, {image.file_name} left "
                  "without boxes", boxes_lost=first[1])  # fmt: skip


def _report_orphan(path: str, ctx: ReadContext, config: YoloConfig) -> None:
    """A label file no image took: reported with its boxes if it lies under ``labels/`` or holds a box line."""
    ann_file = ctx.rel(path)
    if "labels" not in ann_file.split("/")[:-1] and not has_box_line(path):
        return  # some other text file
    stem = os.path.basename(path)[:-4]
    folders = {os.path.dirname(path), os.path.dirname(swap_folder(path, "labels", "images") or path)}
    image = next((p for p in ctx.index.by_stem.get(stem, []) if os.path.dirname(p) in folders), None)
    if image is not None and config.path is not None:
        message = f"its image {ctx.rel(image)} is in no split that {ctx.rel(config.path)} lists"
    elif image is not None:
        message = f"its image {ctx.rel(image)} was not read"
    else:
        message = "no image for this label file (none of its name beside it or in the matching images/ folder)"
    ctx.issue("label_without_image", ann_file, "", message, boxes_lost=count_lines(path))


# -- writing -------------------------------------------------------------------------------------------------------
def export_yolo(dataset: Dataset, output_dir: str | Path, split: str = "train", *, crowd: str = "refuse") -> Path:
    """Write ``images/<split>/<file_name>``, ``labels/<split>/<stem>.txt`` and ``data.yaml`` (names by source id).

    YOLO cannot mark a crowd (ignore) region: ``crowd="refuse"`` raises when the dataset has one, ``"drop"`` leaves
    them out and ``"as_object"`` writes them as ordinary boxes. A ``file_name`` that would leave ``output_dir``
    raises :class:`DatasetValidationError` before anything is written.
    """
    check_crowd_policy(dataset, crowd, "YOLO")
    output_dir = Path(output_dir)
    labels_dir = output_dir / "labels" / split
    targets = [
        safe_join(labels_dir, name, f"record {i}").with_suffix(".txt") for i, name in enumerate(dataset["file_name"])
    ]
    repeated = [str(t.relative_to(output_dir)) for t, n in Counter(targets).items() if n > 1]
    if repeated:
        raise DatasetValidationError(f"several images would share the label file(s) {repeated[:5]}; rename them")
    mapping = get_category_mapping(dataset)
    source_ids = [mapping.source_id(label) for label in range(len(class_names_of(dataset)))]
    index_of = {label: sid for label, sid in enumerate(source_ids)}
    if sorted(source_ids) != list(range(len(source_ids))):  # YOLO indices must be 0..N-1
        index_of = {label: label for label in range(len(source_ids))}
    rows = dataset.select_columns(["width", "height", "objects"])
    for label_path, row in zip(targets, rows):
        objects, w, h = row["objects"], row["width"], row["height"]
        lines = []
        for j, bbox in enumerate(objects["bbox"]):
            if not keep_object(objects.get("iscrowd"), j, crowd):
                continue
            cx, cy, bw, bh = xyxy_to_cxcywh(xywh_to_xyxy(bbox))
            lines.append(f"{index_of[objects['category'][j]]} {cx / w:.6f} {cy / h:.6f} {bw / w:.6f} {bh / h:.6f}\n")
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text("".join(lines), encoding="utf-8")
    write_image_files(dataset, output_dir / "images" / split)
    names = {index_of[label]: name for label, name in enumerate(class_names_of(dataset))}
    config_path = output_dir / "data.yaml"
    config = yaml.safe_load(read_text(config_path)) if config_path.exists() else {"path": "."}
    config[split if split != "validation" else "val"] = f"images/{split}"
    config["names"] = dict(sorted(names.items()))
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return output_dir


export = export_yolo  # the registry's name for it (formats.export_dataset)
