"""Where a YOLO dataset's files are, for :mod:`.yolo`: text files, the config and class list, split folders, and
which label file belongs to which image (see :mod:`.yolo`'s docstring for the rules)."""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from ..report import DatasetValidationError
from ..schema import Category
from ..splits import split_from_text
from .base import IMAGE_EXTENSIONS, ReadContext, walk_files

CLASS_LIST_FILES = ("classes.txt", "obj.names", "_darknet.labels")
_LIST_FILE_STEMS = {"train", "val", "valid", "validation", "test", "trainval", "license", "requirements"}
_IMAGE_FOLDERS = ("images", "JPEGImages")  # the folder whose ``labels`` sibling holds the label files
ENCODING = "utf-8-sig"  # UTF-8, with or without the BOM Windows editors write

# (image path or None when missing, the name a list file gave it or None, its split)
Listed = tuple[str | None, str | None, str | None]


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


def box_line_class(line: str) -> int | None:
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
                return box_line_class(line) is not None
    return False


def has_box_line(path: str) -> bool:
    """Whether any line of a text file (perhaps no label file at all) is shaped like a box."""
    with open(path, encoding=ENCODING, errors="replace") as f:
        return any(box_line_class(line) is not None for line in f)


def count_lines(path: str) -> int:
    """Non-empty lines of a label file: the boxes it holds, malformed ones included."""
    return sum(1 for line in read_text(path).splitlines() if line.strip())


def candidate_label_files(root: Path, config_files: Iterable[str | Path] = ()) -> list[str]:
    """The ``.txt`` files under ``root`` that may be label files: not the files a config names (list files, class
    lists), nor VOC ``ImageSets``. Outside a ``labels`` folder, list-file, class-list and README names are left out
    too; inside one (or beside an image of the same stem) ``val.txt`` is the label file of ``val.png``."""
    named = {os.path.abspath(p) for p in config_files}
    out = []
    for p in walk_files(root, ".txt"):
        if p in named or f"{os.sep}ImageSets{os.sep}" in p:
            continue
        name = os.path.basename(p)
        stem = name[:-4].lower()
        special = name in CLASS_LIST_FILES or stem in _LIST_FILE_STEMS or stem.startswith("readme")
        if special and not _in_labels_folder(p, root) and not _beside_image(p):
            continue
        out.append(p)
    return out


def _in_labels_folder(path: str, root: Path) -> bool:
    folders = os.path.relpath(os.path.dirname(path), os.path.abspath(root)).split(os.sep)
    return "labels" in (f.lower() for f in folders)


def _beside_image(path: str) -> bool:
    stem = path[:-4]
    return any(os.path.exists(stem + ext) for ext in (".jpg", ".jpeg", ".png", ".bmp", ".webp"))


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


def _categories_from_names(names) -> list[Category]:
    if isinstance(names, dict):
        return [Category(name=str(names[k]), source_id=int(k)) for k in sorted(names, key=int)]
    return [Category(name=str(n), source_id=i) for i, n in enumerate(names)]


def _resolve_config_path(entry: str, bases: list[Path]) -> Path | None:
    for base in bases:
        for candidate in (base / entry, base / entry[3:] if entry.startswith("../") else None):
            if candidate is not None and candidate.exists():
                return candidate
    return None


class YoloConfig:
    """The class list and the split specs (folder or list file, per split) a YOLO config gives."""

    def __init__(self, root: Path) -> None:
        self.categories: list[Category] | None = None
        self.splits: dict[str, list[str]] = {}
        self.bases: list[Path] = [root]
        self.path = find_config(root)
        self.class_list: Path | None = None  # the class list file, when the classes come from one
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
                self.class_list = names
                self.categories = _categories_from_names(_read_names_file(names))
            for key in ("train", "valid", "test"):
                if entries.get(key) and self._find(entries[key]) is not None:
                    self.splits[split_from_text(key) or key] = [entries[key]]
        if self.categories is None:
            for name in CLASS_LIST_FILES:
                found = sorted(root.rglob(name))
                if found:
                    self.class_list = found[0]
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


def walk_images(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.abspath(folder)):
        dirnames.sort()
        out.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        )
    return out


def swap_folder(path: str, old: str, new: str) -> str | None:
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
        for path in (*(swap_folder(place, folder, "labels") for folder in _IMAGE_FOLDERS), place):
            if path is not None:
                yield os.path.splitext(path)[0] + ".txt"


class LabelIndex:
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

    def match(self, listed: list[Listed]) -> list[tuple[str | None, bool]]:
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


def sibling_split_folders(folders: dict[str, list[Path]], root: Path) -> dict[str, list[Path]]:
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
            labels = swap_folder(os.path.abspath(images), "images", "labels")
            if split is None or split in folders or not images.is_dir() or not (labels and os.path.isdir(labels)):
                continue
            if images not in extra.setdefault(split, []):
                extra[split].append(images)
    return extra


def images_of_split(
    folders: list[Path], config: YoloConfig, ctx: ReadContext, split: str
) -> list[tuple[str | None, str | None, tuple[str, str] | None]]:
    """(image path or None when missing, the name it was listed as, (list file, ``line N``) where it was listed) for
    one split's folders and list files. Paths are strings: a million ``Path`` objects would cost far more memory."""
    out: list[tuple[str | None, str | None, tuple[str, str] | None]] = []
    for found in folders:
        config_file = ctx.rel(config.path) if config.path else ""
        ctx.check_inside(found, str(found), config_file, f"split {split!r}")
        if found.is_dir():
            out.extend((p, None, None) for p in walk_images(found))
            continue
        list_file = ctx.rel(found)
        for n, line in enumerate(read_text(found).splitlines(), start=1):
            name = line.strip()
            if name:
                path = ctx.resolve_image(
                    name, base_dirs=(found.parent, *config.bases), split=split, ann_file=list_file, record=f"line {n}"
                )
                out.append((os.path.abspath(path) if path is not None else None, name, (list_file, f"line {n}")))
    return out
