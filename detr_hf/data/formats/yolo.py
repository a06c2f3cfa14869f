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

import codecs
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import yaml
from datasets import Dataset

from ..report import DatasetValidationError
from ..schema import class_names_of, get_category_mapping
from .base import (
    IMAGE_EXTENSIONS,
    ReadContext,
    SourceCategory,
    SourceData,
    SourceImage,
    SourceObject,
    split_from_text,
    walk_files,
)
from .geometry import cxcywh_to_xyxy, flat_points_bounds, parse_number, xywh_to_xyxy, xyxy_to_cxcywh
from .writing import check_crowd_policy, keep_object, safe_join, write_image_files

NAME = "yolo"
CLASS_LIST_FILES = ("classes.txt", "obj.names", "_darknet.labels")
_LIST_FILE_STEMS = {"train", "val", "valid", "validation", "test", "trainval", "license", "requirements"}
_IMAGE_FOLDERS = ("images", "JPEGImages")  # the folder whose ``labels`` sibling holds the label files
ENCODING = "utf-8-sig"  # UTF-8, with or without the BOM Windows editors write

# (image path or None when missing, the name a list file gave it or None, its split)
_Listed = tuple[str | None, str | None, str | None]


def read_text(path: str | Path) -> str:
    """A text file decoded as UTF-8; raises :class:`DatasetValidationError` naming the file and line if it is not."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode(ENCODING)
    except UnicodeDecodeError as e:
        start = e.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data[:start].count(b"\n") + 1
        raise DatasetValidationError(
            f"{path}: line {line}: not UTF-8 text ({e.reason} at byte {start}); save the file as UTF-8"
        ) from None


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _box_line_class(line: str) -> int | None:
    """The class index of a line shaped like a box or a segment (an integer and at least four numbers), else None."""
    tokens = line.split()
    if len(tokens) < 5 or not (tokens[0].isascii() and tokens[0].isdigit()):
        return None
    return int(tokens[0]) if all(_is_number(t) for t in tokens[1:]) else None


def looks_like_label_file(path: str | Path) -> bool:
    """A non-empty label file: its first line is an integer class and at least four numbers."""
    with open(path, encoding=ENCODING, errors="replace") as f:  # a probe: any text file may come here
        for line in f:
            if line.strip():
                return _box_line_class(line) is not None
    return False


def _has_box_line(path: str) -> bool:
    """Whether any line of a text file (perhaps no label file at all) is shaped like a box."""
    with open(path, encoding=ENCODING, errors="replace") as f:
        return any(_box_line_class(line) is not None for line in f)


def _count_lines(path: str) -> int:
    """Non-empty lines of a label file: the boxes it holds, malformed ones included."""
    return sum(1 for line in read_text(path).splitlines() if line.strip())


def candidate_label_files(root: Path) -> list[str]:
    out = []
    for p in walk_files(root, ".txt"):
        name = os.path.basename(p)
        stem = name[:-4].lower()
        if name in CLASS_LIST_FILES or stem in _LIST_FILE_STEMS or stem.startswith("readme"):
            continue
        if f"{os.sep}ImageSets{os.sep}" not in p:
            out.append(p)
    return out


def find_config(root: Path) -> Path | None:
    """``data.yaml`` (any yaml with ``names``) or Darknet's ``obj.data``."""
    for path in sorted(root.rglob("*.yaml")) + sorted(root.rglob("*.yml")):
        if b"names" not in path.read_bytes():
            continue
        try:
            data = yaml.safe_load(read_text(path))  # a config that does not decode raises, naming the file
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and "names" in data:
            return path
    data_files = sorted(root.rglob("*.data"))
    return data_files[0] if data_files else None


def _read_names_file(path: Path) -> list[str]:
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def _categories_from_names(names) -> list[SourceCategory]:
    if isinstance(names, dict):
        return [SourceCategory(name=str(names[k]), source_id=int(k)) for k in sorted(names, key=int)]
    return [SourceCategory(name=str(n), source_id=i) for i, n in enumerate(names)]


def _resolve_config_path(entry: str, bases: list[Path]) -> Path | None:
    for base in bases:
        for candidate in (base / entry, base / entry[3:] if entry.startswith("../") else None):
            if candidate is not None and candidate.exists():
                return candidate
    return None


class _Config:
    """The class list and the split specs (folder or list file, per split) a YOLO config gives."""

    def __init__(self, root: Path) -> None:
        self.categories: list[SourceCategory] | None = None
        self.splits: dict[str, list[str]] = {}
        self.bases: list[Path] = [root]
        self.path = find_config(root)
        path = self.path
        if path is not None and path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(read_text(path))
            self.categories = _categories_from_names(data["names"])
            base = Path(str(data.get("path") or "."))
            base = base if base.is_absolute() else path.parent / base
            self.bases = [b for b in (base, path.parent, root) if b.is_dir()]
            for key in ("train", "val", "test"):
                value = data.get(key)
                if value:
                    self.splits[split_from_text(key) or key] = [
                        str(v) for v in (value if isinstance(value, list) else [value])
                    ]
        elif path is not None:  # Darknet obj.data: "key = value" lines with paths relative to Darknet's folder
            entries = {}
            for line in read_text(path).splitlines():
                if "=" in line:
                    key, value = (s.strip() for s in line.split("=", 1))
                    entries[key] = value
            self.bases = [path.parent, root]
            names = self._find(entries.get("names", ""))
            if names is not None:
                self.categories = _categories_from_names(_read_names_file(names))
            for key in ("train", "valid", "test"):
                if entries.get(key) and self._find(entries[key]) is not None:
                    self.splits[split_from_text(key) or key] = [entries[key]]
        if self.categories is None:
            for name in CLASS_LIST_FILES:
                found = sorted(root.rglob(name))
                if found:
                    self.categories = _categories_from_names(_read_names_file(found[0]))
                    break

    def _find(self, entry: str) -> Path | None:
        """A path from a config, tried as written and without its leading folders (Darknet's ``data/``)."""
        parts = Path(entry).parts
        for k in range(len(parts)):
            found = _resolve_config_path(str(Path(*parts[k:])), self.bases)
            if found is not None:
                return found
        return None

    def resolve(self, split: str, entry: str) -> Path:
        found = self._find(entry)
        if found is None:
            raise DatasetValidationError(f"{self.path}: split {split!r} points to {entry!r}, which does not exist")
        return found


def _walk_images(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.abspath(folder)):
        dirnames.sort()
        out.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        )
    return out


def _swap_folder(path: str, old: str, new: str) -> str | None:
    """``path`` with its last folder named ``old`` renamed ``new`` (Ultralytics' ``images/`` -> ``labels/`` rule)."""
    head, found, tail = (path + os.sep).rpartition(f"{os.sep}{old}{os.sep}")
    return f"{head}{os.sep}{new}{os.sep}{tail}".rstrip(os.sep) if found else None


def _label_candidates(image: str | None, name: str | None, root: str) -> Iterator[str]:
    """Where the label file of one image may be: under ``labels/`` instead of ``images/`` (or Darknet's
    ``JPEGImages/``), beside it, and where the list file named it, relative to the dataset folder (leading folders
    dropped, but never a split folder)."""
    places = [image] if image else []
    if name:
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        for k in range(len(parts)):
            if k and split_from_text(parts[k - 1]):
                break
            places.append(os.path.normpath(os.path.join(root, *parts[k:])))
    for place in places:
        for path in (*(_swap_folder(place, folder, "labels") for folder in _IMAGE_FOLDERS), place):
            if path is not None:
                yield os.path.splitext(path)[0] + ".txt"


class _LabelIndex:
    """Label files (absolute path strings) and the image each one was read for."""

    def __init__(self, files: list[str], root: Path) -> None:
        self.files = set(files)
        self.root = os.path.abspath(root)
        self.claimed: dict[str, tuple[str, int]] = {}  # label -> (file_name of the image it went to, boxes kept)
        self._split_of_folder: dict[str, str | None] = {}

    def split_of(self, path: str) -> str | None:
        """The split a label file's folders name (the nearest split-like folder under the dataset folder)."""
        folder = os.path.dirname(path)
        if folder not in self._split_of_folder:
            inside = folder[len(self.root) + 1 :] if folder.startswith(self.root + os.sep) else ""
            names = reversed(inside.split(os.sep))
            self._split_of_folder[folder] = next((s for s in map(split_from_text, names) if s), None)
        return self._split_of_folder[folder]

    def remove_under(self, folder: str) -> list[str]:
        """Take the label files under ``folder`` out of the index; returns them."""
        prefix = os.path.abspath(folder) + os.sep
        taken = sorted(p for p in self.files if p.startswith(prefix))
        self.files.difference_update(taken)
        return taken

    def match(self, listed: list[_Listed]) -> list[tuple[str | None, bool]]:
        """(label file or None, whether it was found by its stem) for each listed image.

        First every image takes the label file at its own place; then an image still without one takes the only
        label file of its stem that no image took that way, in its split or in folders that name no split (never in
        another split's folder).
        """
        matched: list[tuple[str | None, bool]] = []
        for path, name, _ in listed:
            label = next((c for c in _label_candidates(path, name, self.root) if c in self.files), None)
            matched.append((label, False))
        direct = {label for label, _ in matched if label is not None}
        by_stem: dict[tuple[str | None, str], list[str]] = {}
        for p in sorted(self.files - direct):
            by_stem.setdefault((self.split_of(p), os.path.basename(p)[:-4]), []).append(p)
        for k, ((path, name, split), (label, _)) in enumerate(zip(listed, matched)):
            if label is None:
                stem = os.path.splitext(os.path.basename(path or name.replace("\\", "/")))[0]
                same = by_stem.get((split, stem), []) + (by_stem.get((None, stem), []) if split else [])
                if len(same) == 1:
                    matched[k] = (same[0], True)
        return matched


def _sibling_split_folders(folders: dict[str, list[Path]], root: Path) -> dict[str, list[Path]]:
    """Image folders beside the listed ones that name a split the config does not list: ``<split>/images`` with
    ``<split>/labels`` beside it (Roboflow), or ``images/<split>`` with ``labels/<split>`` (Ultralytics)."""
    root_path = os.path.abspath(root)
    extra: dict[str, list[Path]] = {}
    for folder in (f for found in folders.values() for f in found if f.is_dir()):
        inner = ("images",) if folder.name == "images" else ()
        split_dir = folder.parent if inner else folder
        parent = os.path.abspath(split_dir.parent)
        if split_from_text(split_dir.name) is None or not (parent + os.sep).startswith(root_path + os.sep):
            continue
        for sibling in sorted(split_dir.parent.iterdir()):
            split = split_from_text(sibling.name)
            images = sibling.joinpath(*inner)
            labels = _swap_folder(os.path.abspath(images), "images", "labels")
            if split is None or split in folders or not images.is_dir() or not (labels and os.path.isdir(labels)):
                continue
            if images not in extra.setdefault(split, []):
                extra[split].append(images)
    return extra


def _images_of_split(
    folders: list[Path], config: _Config, ctx: ReadContext, split: str
) -> list[tuple[str | None, str | None]]:
    """(image path or None when missing, the name it was listed as) for one split's folders and list files.
    Paths are strings: a million ``Path`` objects would cost far more memory."""
    out: list[tuple[str | None, str | None]] = []
    for found in folders:
        config_file = ctx.rel(config.path) if config.path else ""
        ctx.check_inside(found, str(found), config_file, f"split {split!r}")
        if found.is_dir():
            out.extend((p, None) for p in _walk_images(found))
            continue
        list_file = ctx.rel(found)
        for n, line in enumerate(read_text(found).splitlines(), start=1):
            name = line.strip()
            if name:
                path = ctx.resolve_image(
                    name, base_dirs=(found.parent, *config.bases), split=split, ann_file=list_file, record=f"line {n}"
                )
                out.append((os.path.abspath(path) if path is not None else None, name))
    return out


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
                box, polygon = cxcywh_to_xyxy(*values), False
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
    config = _Config(ctx.root)
    labels = _LabelIndex(candidate_label_files(ctx.root), ctx.root)
    if config.splits:
        folders = {split: [config.resolve(split, e) for e in entries] for split, entries in config.splits.items()}
        for split, found in _sibling_split_folders(folders, ctx.root).items():
            for images in found:
                _extra_split(images, split, extra_splits, config, labels, ctx)
            if extra_splits:
                folders[split] = found
        listed = [
            (p, name, split)
            for split, found in folders.items()
            for p, name in _images_of_split(found, config, ctx, split)
        ]
    else:
        listed = []
        for p in ctx.index.all_images():
            parts = ctx.file_name(p).split("/")[:-1]
            split = next((s for s in map(split_from_text, reversed(parts)) if s), None)
            listed.append((p, None, split))
    categories = config.categories
    if categories is None:
        found_classes = (
            _box_line_class(line) for path in sorted(labels.files) for line in read_text(path).splitlines()
        )
        highest = max((c for c in found_classes if c is not None), default=-1)
        categories = [SourceCategory(name=str(i), source_id=i) for i in range(highest + 1)]
        ctx.issue(
            "class_list_missing", ctx.rel(ctx.root), "", "no data.yaml, classes.txt or obj.names: classes named 0..N-1"
        )
    by_index = {c.source_id: c.name for c in categories}
    matched = labels.match(listed)
    return SourceData(images=_images(listed, matched, labels, by_index, ctx, config), categories=categories)


def _extra_split(
    images: Path, split: str, read_it: bool, config: _Config, labels: _LabelIndex, ctx: ReadContext
) -> None:
    """Note a split folder the config does not list, or report it skipped with what it holds."""
    where, config_name = ctx.rel(images), ctx.rel(config.path)
    if read_it:
        ctx.report.notes.append(
            f"{where}: not listed in {config_name}, read as split {split!r} (extra_splits=False leaves it out)"
        )
        return
    skipped = labels.remove_under(_swap_folder(os.path.abspath(images), "images", "labels"))
    boxes = sum(_count_lines(p) for p in skipped)
    ctx.issue("split_skipped", where, "",
              f"split folder not listed in {config_name} left out (extra_splits=False): "
              f"{len(_walk_images(images))} images, {len(skipped)} label files, {boxes} boxes",
              boxes_lost=boxes)  # fmt: skip


def _images(
    listed: list[_Listed],
    matched: list[tuple[str | None, bool]],
    labels: _LabelIndex,
    by_index: dict[int, str],
    ctx: ReadContext,
    config: _Config,
) -> Iterator[SourceImage]:
    for (path, name, split), (label, by_stem) in zip(listed, matched):
        if path is None:
            image = SourceImage(file_name=name.replace("\\", "/"), ann_file=name, split=split)
        else:
            file_name = ctx.file_name(path)
            image = SourceImage(file_name=file_name, ann_file=file_name, path=path, split=split, stat=ctx.stat(path))
        if label is not None:
            _attach_label(image, label, by_stem, labels, by_index, ctx)
        yield image
    for path in sorted(labels.files - labels.claimed.keys()):
        _report_orphan(path, ctx, config)


def _attach_label(
    image: SourceImage, label: str, by_stem: bool, labels: _LabelIndex, by_index: dict[int, str], ctx: ReadContext
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


def _report_orphan(path: str, ctx: ReadContext, config: _Config) -> None:
    """A label file no image took: reported with its boxes if it lies under ``labels/`` or holds a box line."""
    ann_file = ctx.rel(path)
    if "labels" not in ann_file.split("/")[:-1] and not _has_box_line(path):
        return  # some other text file
    stem = os.path.basename(path)[:-4]
    folders = {os.path.dirname(path), os.path.dirname(_swap_folder(path, "labels", "images") or path)}
    image = next((p for p in ctx.index.by_stem.get(stem, []) if os.path.dirname(p) in folders), None)
    if image is not None and config.path is not None:
        message = f"its image {ctx.rel(image)} is in no split that {ctx.rel(config.path)} lists"
    elif image is not None:
        message = f"its image {ctx.rel(image)} was not read"
    else:
        message = "no image for this label file (none of its name beside it or in the matching images/ folder)"
    ctx.issue("label_without_image", ann_file, "", message, boxes_lost=_count_lines(path))


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
            cx, cy, bw, bh = xyxy_to_cxcywh(xywh_to_xyxy(*bbox))
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
