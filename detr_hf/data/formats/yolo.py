"""YOLO txt: one ``class cx cy w h`` line per box (fractions of the image), one label file per image; read and write.

Layouts understood: Ultralytics (``data.yaml`` with ``names`` and ``train``/``val``/``test`` folders or image lists,
labels under ``labels/`` beside ``images/``), Darknet (``obj.data``, ``obj.names``, ``train.txt``), and a flat folder
of images and label files with ``classes.txt``. An image without a label file is a negative; a label file without an
image is reported. Segment lines (``class x1 y1 x2 y2 ...``) are read as their enclosing box.
"""

from __future__ import annotations

import os
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
from .images import write_image_files

NAME = "yolo"
CLASS_LIST_FILES = ("classes.txt", "obj.names", "_darknet.labels")
_LIST_FILE_STEMS = {"train", "val", "valid", "validation", "test", "trainval", "readme", "license", "requirements"}


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def looks_like_label_file(path: str | Path) -> bool:
    """A non-empty label file: its first line is an integer class and at least four numbers."""
    with open(path, errors="ignore") as f:
        for line in f:
            tokens = line.split()
            if tokens:
                return len(tokens) >= 5 and tokens[0].isdigit() and all(_is_number(t) for t in tokens[1:])
    return False


def candidate_label_files(root: Path) -> list[str]:
    out = []
    for p in walk_files(root, ".txt"):
        name = os.path.basename(p)
        if name in CLASS_LIST_FILES or name[:-4].lower() in _LIST_FILE_STEMS or f"{os.sep}ImageSets{os.sep}" in p:
            continue
        out.append(p)
    return out


def find_config(root: Path) -> Path | None:
    """``data.yaml`` (any yaml with ``names``) or Darknet's ``obj.data``."""
    for path in sorted(root.rglob("*.yaml")) + sorted(root.rglob("*.yml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and "names" in data:
            return path
    data_files = sorted(root.rglob("*.data"))
    return data_files[0] if data_files else None


def _read_names_file(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


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
        path = find_config(root)
        if path is not None and path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text())
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
            for line in path.read_text().splitlines():
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


def _walk_images(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.abspath(folder)):
        dirnames.sort()
        out.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        )
    return out


class _LabelIndex:
    """Label files (absolute path strings), by path and by stem; remembers which ones an image claimed."""

    def __init__(self, files: list[str]) -> None:
        self.files = set(files)
        self.by_stem: dict[str, list[str]] = {}
        for p in sorted(self.files):
            self.by_stem.setdefault(os.path.splitext(os.path.basename(p))[0], []).append(p)
        self.used: set[str] = set()

    def find(self, image: str | Path, listed_as: str | None, root: Path) -> Path | None:
        image = Path(image)
        candidates = []
        parts = image.parts
        if "images" in parts:
            k = len(parts) - 1 - parts[::-1].index("images")
            candidates.append(Path(*parts[:k], "labels", *parts[k + 1 :]).with_suffix(".txt"))
        candidates.append(image.with_suffix(".txt"))
        if listed_as:
            listed = Path(listed_as.replace("\\", "/")).with_suffix(".txt").parts
            candidates.extend(root / Path(*listed[k:]) for k in range(len(listed)))
        for c in candidates:
            key = os.path.abspath(c)
            if key in self.files:
                self.used.add(key)
                return Path(key)
        same_stem = self.by_stem.get(image.stem, [])
        if len(same_stem) == 1:
            self.used.add(same_stem[0])
            return Path(same_stem[0])
        return None


def _images_of_split(
    entries: list[str], config: _Config, ctx: ReadContext, split: str
) -> list[tuple[str | None, str | None]]:
    """(image path or None when missing, the name it was listed as) for one split's folders and list files.
    Paths are strings: a million ``Path`` objects would cost far more memory."""
    out: list[tuple[str | None, str | None]] = []
    for entry in entries:
        found = config._find(entry)
        if found is None:
            raise DatasetValidationError(f"{ctx.root}: split {split!r} points to {entry!r}, which does not exist")
        if found.is_dir():
            out.extend((p, None) for p in _walk_images(found))
            continue
        for line in found.read_text().splitlines():
            name = line.strip()
            if name:
                path = ctx.resolve_image(name, base_dirs=(found.parent, *config.bases), split=split)
                out.append((str(path) if path is not None else None, name))
    return out


def parse_label_file(path: Path, ann_file: str, ctx: ReadContext, categories: dict[int, str]) -> list[SourceObject]:
    objects = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        record = f"line {n}"
        try:
            values = [parse_number(t) for t in tokens]
            if values[0] != int(values[0]) or values[0] < 0:
                raise ValueError(f"class {tokens[0]!r} is not a non-negative integer")
            if len(values) == 5:
                box, polygon = cxcywh_to_xyxy(*values[1:]), False
            elif len(values) >= 7 and len(values) % 2 == 1:
                box, polygon = flat_points_bounds(values[1:]), True
            else:
                raise ValueError(f"expected 'class cx cy w h' (or a segment), got {len(tokens)} values")
        except ValueError as e:
            ctx.issue("malformed", ann_file, record, f"{e}: {line.strip()!r}", boxes_lost=1)
            continue
        index = int(values[0])
        if index not in categories:
            ctx.issue("unknown_class", ann_file, record, f"class index {index} is not in the class list", boxes_lost=1)
            continue
        if polygon:
            ctx.issue("shape_to_box", ann_file, record, "segment read as its enclosing box")
        objects.append(SourceObject(name=categories[index], box=box, record=record, normalized=True))
    return objects


def read(ctx: ReadContext) -> SourceData:
    """Read a YOLO folder (see the module docstring for the layouts)."""
    config = _Config(ctx.root)
    labels = _LabelIndex(candidate_label_files(ctx.root))
    if config.splits:
        listed = [
            (p, name, split)
            for split, entries in config.splits.items()
            for p, name in _images_of_split(entries, config, ctx, split)
        ]
    else:
        listed = []
        for p in ctx.index.all_images():
            parts = ctx.file_name(p).split("/")[:-1]
            split = next((s for s in map(split_from_text, reversed(parts)) if s), None)
            listed.append((p, None, split))
    categories = config.categories
    if categories is None:
        highest = -1
        for path in sorted(labels.files):
            for line in Path(path).read_text(errors="replace").splitlines():
                tokens = line.split()
                if tokens and tokens[0].isdigit():
                    highest = max(highest, int(tokens[0]))
        categories = [SourceCategory(name=str(i), source_id=i) for i in range(highest + 1)]
        ctx.issue(
            "class_list_missing", ctx.rel(ctx.root), "", "no data.yaml, classes.txt or obj.names: classes named 0..N-1"
        )
    by_index = {c.source_id: c.name for c in categories}
    return SourceData(images=_images(listed, labels, by_index, ctx), categories=categories)


def _images(listed: list, labels: _LabelIndex, by_index: dict[int, str], ctx: ReadContext) -> Iterator[SourceImage]:
    for path, name, split in listed:
        if path is None:
            label = labels.find(ctx.root / name, name, ctx.root)
            image = SourceImage(
                file_name=name.replace("\\", "/"), ann_file=ctx.rel(label) if label else name, split=split
            )
        else:
            label = labels.find(path, name, ctx.root)
            image = SourceImage(
                file_name=ctx.file_name(path), ann_file=ctx.rel(label) if label else ctx.file_name(path),
                path=os.path.abspath(path), split=split, stat=ctx.stat(path),
            )  # fmt: skip
        if label is not None:
            image.objects = parse_label_file(label, ctx.rel(label), ctx, by_index)
        yield image
    for path in sorted(labels.files - labels.used):
        if looks_like_label_file(Path(path)):
            lost = sum(1 for line in Path(path).read_text(errors="replace").splitlines() if line.strip())
            ctx.issue("label_without_image", ctx.rel(path), "", "no image matches this label file", boxes_lost=lost)


# -- writing -------------------------------------------------------------------------------------------------------
def export_yolo(dataset: Dataset, output_dir: str | Path, split: str = "train") -> Path:
    """Write ``images/<split>/<file_name>``, ``labels/<split>/<stem>.txt`` and ``data.yaml`` (names by source id).

    Crowd boxes are left out: YOLO has no way to say "ignore this region".
    """
    output_dir = Path(output_dir)
    mapping = get_category_mapping(dataset)
    source_ids = [mapping.source_id(label) for label in range(len(class_names_of(dataset)))]
    index_of = {label: sid for label, sid in enumerate(source_ids)}
    if sorted(source_ids) != list(range(len(source_ids))):  # YOLO indices must be 0..N-1
        index_of = {label: label for label in range(len(source_ids))}
    for row in dataset.select_columns(["file_name", "width", "height", "objects"]):
        objects, w, h = row["objects"], row["width"], row["height"]
        lines = []
        for j, bbox in enumerate(objects["bbox"]):
            if (objects.get("iscrowd") or [0] * len(objects["bbox"]))[j]:
                continue
            cx, cy, bw, bh = xyxy_to_cxcywh(xywh_to_xyxy(*bbox))
            lines.append(f"{index_of[objects['category'][j]]} {cx / w:.6f} {cy / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        label_path = output_dir / "labels" / split / Path(row["file_name"]).with_suffix(".txt")
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text("".join(line + "\n" for line in lines))
    write_image_files(dataset, output_dir / "images" / split)
    names = {index_of[label]: name for label, name in enumerate(class_names_of(dataset))}
    config_path = output_dir / "data.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {"path": "."}
    config[split if split != "validation" else "val"] = f"images/{split}"
    config["names"] = dict(sorted(names.items()))
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return output_dir
