"""The conversion report: what was read, what was kept, and every fix applied on the way.

Nothing is dropped or changed silently: each fix becomes an :class:`Issue` naming the file and the record, and the
report's counts always add up (boxes read = boxes kept + boxes lost in issues). With ``strict=True`` the first fix
raises :class:`DatasetValidationError` instead.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPORT_FILE_NAME = "conversion_report.json"
MAX_ISSUES_PER_KIND = 10_000  # counts stay exact beyond this; only the detailed list is capped

# kind -> (is a fix, what happened). Fixes change or drop annotations and are errors under strict=True; notes are
# documented, lossless interpretations of the source (a polygon read as its box) and never raise.
ISSUE_KINDS: dict[str, tuple[bool, str]] = {
    "box_clipped": (True, "box extended beyond the image; clipped to it"),
    "box_degenerate": (True, "box without width or height; dropped"),
    "unknown_class": (True, "class not in the class list; box dropped"),
    "missing_image": (True, "image file not found; record and its boxes dropped"),
    "label_without_image": (True, "label file without an image; dropped"),
    "malformed": (True, "unreadable line or record; dropped"),
    "image_undecodable": (True, "image does not decode; record and its boxes dropped"),
    "size_mismatch": (True, "declared image size differs from the image file; boxes kept in image pixels"),
    "orphan_annotation": (True, "annotation for an image id the file does not list; dropped"),
    "unsupported_shape": (True, "shape that is neither a box nor a polygon; dropped"),
    "duplicate_image": (True, "image listed more than once; later records dropped"),
    "class_list_missing": (True, "no class names in the source; numeric names used"),
    "exif_rotated": (False, "boxes drawn on the stored pixels, moved to the EXIF-oriented image"),
    "image_converted": (False, "16-bit or float image stored as 8-bit"),
    "shape_to_box": (False, "polygon, rotated box or mask stored as its enclosing box"),
    "difficult_excluded": (False, "difficult box left out (include_difficult=False)"),
    "label_ambiguous": (True, "label file claimed by more than one image; kept for the first only"),
    "label_matched_by_stem": (False, "label file found by its stem in the image's split, not beside the image"),
    "shapes_merged": (False, "shapes sharing a label and group_id merged into one box"),
    "ignore_region": (False, "region marked to be ignored stored as a crowd (ignore) region, not a class"),
    "path_relocated": (False, "image path written on another machine matched by its longest existing tail"),
    "exif_orientation": (False, "EXIF orientation tag read; the frame boxes were drawn in was assumed"),
    "split_skipped": (True, "split folder not listed in the config and excluded; its images and boxes not read"),
}


class DatasetValidationError(ValueError):
    """Raised under ``strict=True`` on the first fix, and for input that cannot be converted at all."""


@dataclass
class Issue:
    """One fix or note: ``file`` and ``record`` (``"line 12"``, ``"object 3"``, ``"annotation id 7"``) locate it."""

    kind: str
    file: str
    record: str
    message: str
    boxes_lost: int = 0
    split: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ISSUE_KINDS:
            raise ValueError(f"Unknown issue kind {self.kind!r}; known kinds: {sorted(ISSUE_KINDS)}")

    @property
    def is_fix(self) -> bool:
        return ISSUE_KINDS[self.kind][0]

    def __str__(self) -> str:
        where = f"{self.file}: {self.record}" if self.record else self.file
        return f"{where}: {self.message} [{self.kind}]"

    def as_error(self) -> DatasetValidationError:
        """The error ``strict=True`` raises for this fix: the same text as the report's line."""
        return DatasetValidationError(f"{self} (strict=True: fix the source, or convert with strict=False)")


@dataclass
class SplitCounts:
    images: int = 0
    negatives: int = 0
    boxes: int = 0


@dataclass
class ConversionReport:
    """Counts of a conversion and every issue met. ``str(report)`` is a readable summary; ``save`` writes JSON."""

    source: str = ""
    format: str = ""
    class_names: list[str] = field(default_factory=list)
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    issue_counts: dict[str, int] = field(default_factory=dict)
    boxes_lost: int = 0
    notes: list[str] = field(default_factory=list)

    # -- building -----------------------------------------------------------------------------------------------
    def add(self, issue: Issue) -> None:
        count = self.issue_counts.get(issue.kind, 0)
        self.issue_counts[issue.kind] = count + 1
        self.boxes_lost += issue.boxes_lost
        if count < MAX_ISSUES_PER_KIND:
            self.issues.append(issue)

    # -- reading ------------------------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return sum(s.images for s in self.splits.values())

    @property
    def num_boxes(self) -> int:
        return sum(s.boxes for s in self.splits.values())

    @property
    def num_fixes(self) -> int:
        return sum(n for kind, n in self.issue_counts.items() if ISSUE_KINDS[kind][0])

    @property
    def boxes_read(self) -> int:
        """Boxes found in the source: the kept ones plus every box an issue dropped."""
        return self.num_boxes + self.boxes_lost

    def count(self, kind: str) -> int:
        return self.issue_counts.get(kind, 0)

    def issues_of(self, kind: str) -> list[Issue]:
        return [i for i in self.issues if i.kind == kind]

    def __str__(self) -> str:
        lines = [f"Conversion report: {self.format or '?'} from {self.source}"]
        lines.append(f"  {'split':<12}{'images':>9}{'negatives':>11}{'boxes':>9}")
        for name, s in self.splits.items():
            lines.append(f"  {name:<12}{s.images:>9}{s.negatives:>11}{s.boxes:>9}")
        total_neg = sum(s.negatives for s in self.splits.values())
        lines.append(f"  {'total':<12}{self.num_images:>9}{total_neg:>11}{self.num_boxes:>9}")
        lines.append(f"  boxes read {self.boxes_read} = kept {self.num_boxes} + dropped {self.boxes_lost}")
        lines.append(f"  {len(self.class_names)} classes")
        if self.boxes_per_class:
            width = max(len(n) for n in self.boxes_per_class)
            for name, n in self.boxes_per_class.items():
                lines.append(f"    {name:<{width}} {n:>8}")
        for title, fixes in (("fixes", True), ("notes", False)):
            kinds = [k for k in ISSUE_KINDS if ISSUE_KINDS[k][0] is fixes and self.issue_counts.get(k)]
            if not kinds:
                lines.append(f"  {title}: none")
                continue
            lines.append(f"  {title}:")
            for k in kinds:
                lines.append(f"    {k:<20}{self.issue_counts[k]:>7}  {ISSUE_KINDS[k][1]}")
        shown = [i for i in self.issues if i.is_fix][:20]
        if shown:
            lines.append("  first fixes:")
            lines.extend(f"    {i}" for i in shown)
        lines.extend(f"  info: {n}" for n in self.notes)
        return "\n".join(lines)

    # -- persistence --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = asdict(self)
        out["num_images"], out["num_boxes"], out["boxes_read"] = self.num_images, self.num_boxes, self.boxes_read
        return out

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON; a directory gets ``conversion_report.json`` inside it."""
        path = Path(path)
        if path.is_dir():
            path = path / REPORT_FILE_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ConversionReport:
        path = Path(path)
        if path.is_dir():
            path = path / REPORT_FILE_NAME
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        for key in ("num_images", "num_boxes", "boxes_read"):
            data.pop(key, None)
        data["splits"] = {k: SplitCounts(**v) for k, v in data.get("splits", {}).items()}
        data["issues"] = [Issue(**i) for i in data.get("issues", [])]
        return cls(**data)

    def kind_summary(self) -> str:
        """One line, e.g. ``box_clipped=2, unknown_class=1``."""
        counts = Counter(self.issue_counts)
        return ", ".join(f"{k}={n}" for k, n in counts.items()) or "no issues"
