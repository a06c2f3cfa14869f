"""What every format reader produces, and the context it reads in.

A reader parses annotations only (never pixels) into :class:`SourceImage` records: boxes as ``xyxy`` corners in the
source's own frame (pixels, or fractions of the image when ``normalized``), classes by name. It yields them one at a
time, so the loader can pickle each into a compact record at once and never holds a dataset's worth of objects; the
loader then checks the images in parallel and turns the records into dataset rows. Readers report every problem
through :meth:`ReadContext.issue`, which raises at once under ``strict=True``.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from ..report import ConversionReport, DatasetValidationError, Issue
from ..schema import Category
from ..splits import split_from_text

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

# A SourceObject of this name (with iscrowd=1) is a region to ignore for every class (LabelMe's ``__ignore__``).
IGNORE_ALL_CLASSES = "__ignore__"


@dataclass(slots=True)
class SourceObject:
    """One annotation as the source gives it."""

    name: str
    box: tuple[float, float, float, float]  # xyxy, in pixels of the source frame, or fractions if normalized
    record: str  # where it is in its file: "line 3", "object 2", "annotation id 17"
    normalized: bool = False
    source_id: int | None = None  # the source's annotation id (COCO)
    area: float | None = None  # the source's area when it has one (COCO: the segmentation's area)
    iscrowd: int = 0
    difficult: int = 0
    truncated: int = 0
    label: int = -1  # the dataset label, when the reader already knows it (datasets cast from another schema)


@dataclass(slots=True)
class SourceImage:
    """One image and its annotations as the source gives them."""

    file_name: str  # the image's path relative to the images root (posix): the record's key
    ann_file: str  # the annotation file, relative to the source folder, for messages
    path: str | None = None  # absolute path of the image file, None when missing or embedded
    embedded_in: str | None = None  # absolute path of a LabelMe JSON whose imageData holds the image
    record: str = ""  # where the image is in ann_file, when that file holds many images
    image_id: int | None = None  # the source's image id (COCO, CVAT)
    declared_size: tuple[int, int] | None = None  # (width, height) written in the annotation file
    split: str | None = None
    objects: list[SourceObject] = field(default_factory=list)
    stat: tuple[int, int] | None = None  # (size, mtime_ns) of the image file: part of the cache key


@dataclass
class SourceData:
    """What a reader found: its images (an iterator, read once), and the class list when the source defines one, in
    its order (:class:`~detr_hf.data.schema.Category` without labels: ``name``, ``source_id``, ``supercategory``). ``categories`` may be filled while ``images`` is consumed (a CVAT file's labels, COCO split files):
    read it afterwards. ``None`` means the source names classes only on its boxes."""

    images: Iterable[SourceImage]
    categories: list[Category] | None = None


def walk_files(root: Path, suffix: str) -> list[str]:
    """Files under ``root`` ending in ``suffix`` (case-insensitive), sorted, skipping hidden folders and files.

    Strings, not ``Path`` objects: a folder may hold a million label files.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.abspath(root)):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(os.path.join(dirpath, f) for f in filenames if f.lower().endswith(suffix) and not f.startswith("."))
    return sorted(out)


class ImageIndex:
    """Every image file under a folder: absolute paths (strings), and the same by file name and by stem."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_path: set[str] = set()
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(os.path.abspath(root)):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    stem, extension = os.path.splitext(name)
                    if extension.lower() in IMAGE_EXTENSIONS:
                        path = os.path.join(dirpath, name)
                        self.by_path.add(path)
                        self.by_name.setdefault(name, []).append(path)
                        self.by_stem.setdefault(stem, []).append(path)

    def all_images(self) -> list[str]:
        return sorted(self.by_path)

    def __len__(self) -> int:
        return len(self.by_path)


def _is_absolute(name: str) -> bool:
    """A posix absolute path, or a Windows one (``C:/...``, ``//server/...``) written on another machine."""
    return name.startswith("/") or re.match(r"^[A-Za-z]:/", name) is not None


def _best_match(candidates: list[Path], wanted: PurePosixPath, split: str | None) -> Path | None:
    """Among same-named files, the one whose folders match ``wanted``'s, or its split's; None if still ambiguous."""

    def suffix_len(p: Path) -> int:
        n = 0
        for a, b in zip(reversed(p.parts), reversed(wanted.parts)):
            if a != b:
                break
            n += 1
        return n

    scored = sorted(candidates, key=suffix_len, reverse=True)
    if suffix_len(scored[0]) > suffix_len(scored[1]):
        return scored[0]
    if split is not None:
        in_split = [p for p in candidates if any(split_from_text(part) == split for part in p.parts[:-1])]
        if len(in_split) == 1:
            return in_split[0]
    return None


class ReadContext:
    """Where a reader reads: the source folder, the images folder, the report, the strictness.

    Paths are compared as absolute strings (``os.path.abspath``, no symlink resolution): cheap for a million files,
    and a ``file_name`` stays the path the user sees under their folder. Images are read only from inside the source
    folder, the images folder and ``image_roots``: an annotation naming a file elsewhere (``../../x.png``, an absolute
    path) is refused, so a downloaded dataset cannot pull the user's own files into a dataset (and onto the Hub).
    """

    def __init__(
        self,
        root: Path,
        images_root: Path,
        report: ConversionReport,
        strict: bool = False,
        image_roots: Iterable[str | os.PathLike] = (),
    ) -> None:
        self.root = root
        self.images_root = images_root
        self.report = report
        self.strict = strict
        self._root = os.path.abspath(root)
        self._images_root = os.path.abspath(images_root)
        self._extra_roots = tuple(os.path.abspath(r) for r in image_roots)
        self._index: ImageIndex | None = None

    @property
    def index(self) -> ImageIndex:
        if self._index is None:
            self._index = ImageIndex(self.images_root)
        return self._index

    @staticmethod
    def _relative(path: str | Path, bases: tuple[str, ...]) -> str | None:
        path = os.path.abspath(path)
        for base in bases:
            if path.startswith(base.rstrip(os.sep) + os.sep):
                return path[len(base.rstrip(os.sep)) + 1 :].replace(os.sep, "/")
        return None

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the source folder (or the images folder), for messages."""
        return self._relative(path, (self._root, self._images_root)) or Path(path).as_posix()

    def file_name(self, path: str | Path) -> str:
        """An image's ``file_name``: its path relative to the images folder (or the source folder, or an image root)."""
        return self._relative(path, (self._images_root, self._root, *self._extra_roots)) or Path(path).name

    def is_inside(self, path: str | Path) -> bool:
        """Whether images may be read from ``path``: inside the source folder, the images folder or an image root."""
        return self._relative(path, (self._root, self._images_root, *self._extra_roots)) is not None

    def check_inside(self, path: str | Path, written: str, ann_file: str = "", record: str = "") -> None:
        """Raise :class:`DatasetValidationError` unless :meth:`is_inside` allows reading ``path``."""
        if self.is_inside(path):
            return
        where = ": ".join(p for p in (ann_file, record) if p) or str(self.root)
        raise DatasetValidationError(
            f"{where}: image {written!r} is {os.path.abspath(path)}, outside the dataset folder {self._root}"
            + (f" and the images folder {self._images_root}" if self._images_root != self._root else "")
            + ": not read. Move the image into the dataset folder, or allow its folder with image_roots=[...]"
            " (detr-hf convert --image-root)"
        )

    def parse_xml(self, path: str | Path) -> ET.Element | None:
        """The root element of an XML annotation file, or None (a ``malformed`` fix) when it is not valid XML."""
        try:
            return ET.parse(path).getroot()
        except ET.ParseError as e:
            self.issue("malformed", self.rel(path), f"line {e.position[0]}", f"not valid XML ({e}); file skipped")
            return None

    def issue(self, kind: str, file: str, record: str, message: str, boxes_lost: int = 0) -> None:
        """Record a fix or a note; under ``strict=True`` a fix raises instead."""
        issue = Issue(kind=kind, file=file, record=record, message=message, boxes_lost=boxes_lost)
        if self.strict and issue.is_fix:
            raise issue.as_error()
        self.report.add(issue)

    def resolve_image(
        self,
        name: str,
        *,
        base_dirs: tuple[Path, ...] = (),
        split: str | None = None,
        ann_file: str = "",
        record: str = "",
    ) -> Path | None:
        """Find the file an annotation names: next to it, under the images folder, or by its name anywhere there.

        A path written on another machine (absolute, or leading out of the folder) that is not here is matched by
        its longest path tail among the indexed images, and reported as ``path_relocated``. A path to an existing
        file outside the dataset folder raises (see :meth:`check_inside`) unless nothing better is found inside.
        ``ann_file`` and ``record`` locate the reference in messages.
        """
        name = name.replace("\\", "/").strip()
        if not name:
            return None
        index = self.index
        foreign = _is_absolute(name) or os.path.normpath(name).split("/")[0] == ".."
        if _is_absolute(name):
            candidates = [os.path.normpath(name)] if os.path.isabs(name) else []  # "C:/..." is never here
        else:
            direct = os.path.normpath(os.path.join(self._images_root, name))
            if direct in index.by_path:  # the common case: named relative to the images folder
                return Path(direct)
            candidates = [os.path.abspath(os.path.join(base, name)) for base in (*base_dirs, self.root)]
        for candidate in candidates:
            if candidate in index.by_path:
                return Path(candidate)
        outside = None
        for candidate in candidates:  # files outside the indexed images folder
            if os.path.isfile(candidate):
                if self.is_inside(candidate):
                    return Path(candidate)
                outside = outside or candidate
        found = self._match_tail(PurePosixPath(name), split)
        if found is not None:
            if foreign or outside is not None:
                self.issue(
                    "path_relocated", ann_file or self.rel(found), record,
                    f"image written as {name!r} {'lies outside the dataset folder' if outside else 'is not there'}; "
                    f"used {self.rel(found)}, the image here with the longest matching path tail",
                )  # fmt: skip
            return found
        if outside is not None:
            self.check_inside(outside, name, ann_file, record)
        return None

    def _match_tail(self, wanted: PurePosixPath, split: str | None) -> Path | None:
        """The indexed image whose path ends like ``wanted`` over the most folders (one, or None if tied)."""
        matches = self.index.by_name.get(wanted.name)
        if not matches and not wanted.suffix:
            matches = self.index.by_stem.get(wanted.name)
        if not matches:
            return None
        if len(matches) == 1:
            return Path(matches[0])
        return _best_match([Path(m) for m in matches], wanted, split)

    @staticmethod
    def stat(path: str | Path) -> tuple[int, int]:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)

    def make_image(self, name: str, ann_file: str, *, base_dirs: tuple[Path, ...] = (), **fields) -> SourceImage:
        """A :class:`SourceImage` for the image ``name`` found as :meth:`resolve_image` does (``path`` None if not)."""
        path = self.resolve_image(
            name, base_dirs=base_dirs, split=fields.get("split"), ann_file=ann_file, record=fields.get("record", "")
        )
        if path is None:
            file_name = PurePosixPath(name.replace("\\", "/")).as_posix().lstrip("/")
            return SourceImage(file_name=file_name, ann_file=ann_file, **fields)
        path = os.path.abspath(path)
        return SourceImage(file_name=self.file_name(path), ann_file=ann_file, path=path, stat=self.stat(path), **fields)


def report_rejected(
    ctx: ReadContext, candidates: Iterable[str | Path], accepted: Iterable[str | Path], problem: Callable, what: str
) -> list[str]:
    """Report each of ``candidates`` (files of the format's extension) that the reader does not read and that
    ``problem(path)`` finds broken (empty, not UTF-8, not parseable) as a ``malformed`` fix naming it; a file of
    another kind (``problem`` gives None) is passed over. Returns ``"file (problem)"`` for each one reported."""
    accepted = {os.path.abspath(p) for p in accepted}
    out = []
    for path in candidates:
        if os.path.abspath(path) in accepted:
            continue
        why = problem(Path(path))
        if why:
            ctx.issue("malformed", ctx.rel(path), "", f"not read as {what}: {why}")
            out.append(f"{ctx.rel(path)} ({why})")
    return out


def no_files_error(ctx: ReadContext, message: str, rejected: list[str]) -> DatasetValidationError:
    """The error of a reader that found none of its files: ``message``, and the broken candidates it passed over."""
    if rejected:
        message += f"; files not read: {', '.join(rejected[:5])}" + (" ..." if len(rejected) > 5 else "")
    return DatasetValidationError(f"{ctx.root}: {message}")


def json_problem(path: Path) -> str | None:
    """Why a ``.json`` file is no annotation file at all (empty, not UTF-8, not JSON, not an object), else None."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        return f"not UTF-8 ({e.reason} at byte {e.start})"
    if not text.strip():
        return "empty file"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        return f"not valid JSON ({e})"
    return None if isinstance(data, dict) else f"the top level is a JSON {type(data).__name__}, not an object"


def xml_problem(path: Path) -> str | None:
    """Why a ``.xml`` file is no annotation file at all (empty, or not valid XML), else None."""
    if not path.read_bytes().strip():
        return "empty file"
    try:
        ET.parse(path)
    except ET.ParseError as e:
        return f"not valid XML ({e})"
    return None


class AnnotationFormat(Protocol):
    """What a format module defines to be registered in ``formats.FORMAT_MODULES`` (modules match it by shape)."""

    NAME: str  # the ``format=`` value
    ALIASES: tuple[str, ...]  # other spellings accepted for it

    def find_files(self, root: Path) -> Sequence:
        """The files under ``root`` that show the folder is in this format (detection counts them; none: not it)."""

    def read(self, ctx: ReadContext, **options: Any) -> SourceData:
        """The annotations under ``ctx.root``, problems reported through ``ctx.issue`` (optional: ``export``)."""


class UnsupportedShapeError(Exception):
    """A shape type that has no box (points, lines, ...): the reader reports the shape as skipped."""
