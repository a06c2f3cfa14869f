"""``check_dataset``: duplicates and leakage, group-aware splits and label health of a detection dataset, in one pass.

Images are streamed once (their fingerprints kept, see :mod:`.fingerprints`), labels read from the Arrow columns
(:mod:`.labels`); the result is a :class:`~.report.HealthReport` (JSON, terminal table, Markdown/HTML via
:func:`.render.save_report`).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from ..data.report import REPORT_FILE_NAME, ConversionReport
from ..data.schema import class_names_of
from ..data.splits import compile_group_by, group_keys, ordered_splits, split_keys
from .duplicates import DEFAULT_NEAR_THRESHOLD, DEFAULT_THUMB_TOLERANCE, find_duplicates
from .fingerprints import Fingerprints, fingerprint_parallel
from .labels import BROKEN, WARNINGS, LabelSettings, check_labels
from .report import IMBALANCE_WARNING, HealthReport, Problem

# conversion fixes that mean broken source labels (errors), and those that are harmless repairs (warnings)
CONVERSION_ERRORS = ("box_degenerate", "malformed", "duplicate_image", "orphan_annotation")
CONVERSION_WARNINGS = ("box_clipped",)
MAX_LISTED = 200  # groups and leaked images listed in the report; counts stay exact


def check_dataset(
    dataset: DatasetDict | Dataset,
    *,
    group_by: str | None = None,
    exact_duplicates: bool = True,
    near_duplicates: bool = True,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    thumb_tolerance: float = DEFAULT_THUMB_TOLERANCE,
    stride: int = 32,
    shortest_edge: int = 800,
    longest_edge: int | None = 1333,
    num_queries: int = 100,
    duplicate_iou: float = 0.9,
    max_aspect: float = 10.0,
    conversion_report: ConversionReport | None = None,
    source: str = "",
    progress: bool = False,
    num_proc: int | None = None,
) -> HealthReport:
    """Check a dataset in the detection schema before training.

    Args:
        dataset: the splits (a single ``Dataset`` is taken as ``train``).
        group_by: a regular expression whose first capture group in ``file_name`` names the group (patient,
            recording, scene), or a column: groups found in two or more splits are leakage.
        exact_duplicates: search identical files (reads every image file, decodes none).
        near_duplicates: also search near duplicates (decodes every image, at a reduced scale for JPEGs).
        near_threshold: bits (of phash + dhash, 128) two images may differ by to be compared further.
        thumb_tolerance: mean absolute difference (0-255) of 8x8 RGB thumbnails below which they are near duplicates.
        stride, shortest_edge, longest_edge: the model's stride and the training resize, for boxes too small to learn.
        num_queries: the model's queries; images with more objects cannot be fully predicted.
        duplicate_iou, max_aspect: thresholds of duplicate labels and extreme aspect ratios.
        conversion_report: the report of the conversion that made ``dataset``: its fixes (boxes dropped or clipped,
            duplicate records) are no longer visible in the rows, so they are counted from it.
        source: how the report names the dataset.
        progress: show a progress bar while images are read.
        num_proc: worker processes reading the images.
    """
    started = time.perf_counter()
    splits = {"train": dataset} if isinstance(dataset, Dataset) else {k: dataset[k] for k in ordered_splits(dataset)}
    if group_by is not None and not any(group_by in ds.column_names for ds in splits.values()):
        compile_group_by(group_by)  # a bad expression fails before any image is read
    total = sum(len(ds) for ds in splits.values())
    read_images = exact_duplicates or near_duplicates
    bar = tqdm(
        total=total,
        desc="Reading images",
        unit=" images",
        disable=not (progress and read_images) or None,
        mininterval=1,
    )
    parts = [
        fingerprint_parallel(ds, near_duplicates, num_proc or 1, bar.update)
        if read_images
        else Fingerprints.empty(len(ds))
        for ds in splits.values()
    ]
    bar.close()
    fingerprints = Fingerprints.concatenate(parts) if parts else Fingerprints.empty(0)
    del parts  # the joined copy is all that is needed
    names = list(splits)
    split_of = np.repeat(np.arange(len(names)), [len(ds) for ds in splits.values()])
    offsets = np.concatenate([[0], np.cumsum([len(ds) for ds in splits.values()])]).astype(np.int64)
    is_train = split_of == names.index("train") if "train" in names else np.zeros(total, bool)
    found = find_duplicates(fingerprints, is_train, near_duplicates, near_threshold, thumb_tolerance)
    file_names = {s: _file_names(ds) for s, ds in splits.items()}

    def member(g: int) -> dict[str, Any]:
        split = names[split_of[g]]
        row = int(g - offsets[split_of[g]])
        name = file_names[split][row]
        return {"split": split, "row": row, "file_name": name.as_py() if hasattr(name, "as_py") else name}

    settings = LabelSettings(stride, shortest_edge, longest_edge, num_queries, duplicate_iou, max_aspect)
    report = HealthReport(
        source=source,
        class_names=class_names_of(next(iter(splits.values()))) if splits else [],
        splits={s: len(ds) for s, ds in splits.items()},
        settings={
            "near_threshold": near_threshold,
            "thumb_tolerance": thumb_tolerance,
            "group_by": group_by,
            **vars(settings),
        },
        duplicates=_duplicates_section(found, member, read_images, near_duplicates),
        leakage=_leakage_section(found, names, split_of, member),
        groups=_spanning_groups(splits, group_by) if group_by is not None else None,
        labels=check_labels(splits, settings),
        conversion=_conversion_counts(conversion_report),
        unreadable=[{**member(g), "error": why} for g, why in fingerprints.errors[:MAX_LISTED]],
    )
    report.problems = _problems(report, len(fingerprints.errors))
    report.seconds = time.perf_counter() - started
    return report


def _file_names(dataset: Dataset):
    """The ``file_name`` column as Arrow (indexed lazily: no Python string per image), else :func:`split_keys`."""
    if "file_name" in dataset.column_names:
        return dataset.select_columns(["file_name"]).with_format("arrow")[:].column("file_name")
    return split_keys(dataset)


def _duplicates_section(found, member, searched: bool, searched_near: bool) -> dict[str, Any]:
    groups = [
        {"kind": kind, "members": [member(g) for g in group]}
        for group, kind in zip(found.groups[:MAX_LISTED], found.group_kinds)
    ]
    across = sum(len({member(g)["split"] for g in group}) > 1 for group in found.groups)
    return {
        "searched": searched,
        "searched_near": searched_near,
        "exact_groups": found.exact_groups,
        "exact_images": found.exact_images,
        "near_groups": sum(k == "near" for k in found.group_kinds),
        "near_pairs": found.near_pair_count,
        "groups_total": len(found.groups),
        "groups_across_splits": int(across),
        "groups": groups,
        "pairs": [
            {"a": member(i), "b": member(j), "bits": d, "thumb_mad": t} for i, j, d, t in found.near_pairs[:MAX_LISTED]
        ],
    }


def _leakage_section(found, names, split_of, member) -> dict[str, dict[str, Any]]:
    out = {}
    for code, split in enumerate(names):
        if split == "train" or "train" not in names:
            continue
        leaked = np.flatnonzero((split_of == code) & (found.twin >= 0))
        kinds = Counter(found.twin_kind[leaked].tolist())
        examples = []
        for g in leaked[:MAX_LISTED]:
            twin = member(int(found.twin[g]))
            examples.append(
                {
                    **member(int(g)),
                    "twin_file_name": twin["file_name"],
                    "twin_row": twin["row"],
                    "kind": str(found.twin_kind[g]),
                }
            )
        out[split] = {
            "images": int((split_of == code).sum()),
            "with_twin_in_train": len(leaked),
            "exact": kinds.get("exact", 0),
            "near": kinds.get("near", 0),
            "examples": examples,
        }
    return out


def _spanning_groups(splits: dict[str, Dataset], group_by: str) -> dict[str, Any]:
    """Groups (by ``group_by``) found in more than one split."""
    per_group: dict[str, Counter] = {}
    unmatched = 0
    pattern = None
    for split, ds in splits.items():
        keys = group_keys(ds, group_by)
        if group_by not in ds.column_names:
            pattern = pattern or compile_group_by(group_by)
            unmatched += sum(pattern.search(k) is None for k in split_keys(ds))
        for key in keys:
            per_group.setdefault(key, Counter())[split] += 1
    spanning = [{"group": g, "splits": dict(c)} for g, c in sorted(per_group.items()) if len(c) > 1]
    return {"group_by": group_by, "groups": len(per_group), "unmatched": unmatched, "spanning": spanning}


def _conversion_counts(report: ConversionReport | None) -> dict[str, int]:
    if report is None:
        return {}
    return {k: report.count(k) for k in (*CONVERSION_ERRORS, *CONVERSION_WARNINGS) if report.count(k)}


def _problems(report: HealthReport, unreadable: int) -> list[Problem]:
    out: list[Problem] = []
    for split, leak in report.leakage.items():
        if leak["with_twin_in_train"]:
            out.append(
                Problem(
                    "error",
                    "leakage",
                    f"{leak['with_twin_in_train']} of {leak['images']} {split} images "
                    f"have a twin in train ({leak['exact']} exact, {leak['near']} near)",
                )
            )
    if report.groups is not None and report.groups["spanning"]:
        out.append(
            Problem(
                "error",
                "group_spans_splits",
                f"{len(report.groups['spanning'])} groups ({report.groups['group_by']}) span two or more splits",
            )
        )
    labels = report.labels
    for kind in BROKEN:
        if labels.counts[kind]:
            out.append(Problem("error", kind, f"{labels.counts[kind]} boxes: {report.describe(kind)}"))
    for kind, n in report.conversion.items():
        severity = "error" if kind in CONVERSION_ERRORS else "warning"
        out.append(Problem(severity, f"conversion_{kind}", f"{n} fixed at conversion: {kind} (source labels)"))
    if unreadable:
        out.append(Problem("error", "unreadable", f"{unreadable} images could not be read"))
    d = report.duplicates
    within = d["groups_total"] - d["groups_across_splits"]
    if within:
        out.append(
            Problem(
                "warning",
                "duplicates",
                f"{within} groups of duplicate images within a split ({d['exact_groups']} exact groups in all)",
            )
        )
    for kind in WARNINGS:
        if labels.counts[kind]:
            message = f"{labels.counts[kind]} {'images' if kind == 'over_query_budget' else 'boxes'}: "
            message += report.describe(kind)
            if kind == "below_stride" and labels.learnable_at:
                message += f"; 90% reach it at shortest_edge {labels.learnable_at['shortest_edge']}"
            out.append(Problem("warning", kind, message))
    train = labels.boxes_per_class.get("train")
    if train:
        absent = [n for n, c in train.items() if c == 0]
        if absent:
            out.append(Problem("warning", "class_absent", f"classes without a box in train: {', '.join(absent)}"))
    ratio = labels.imbalance()
    if ratio is not None and ratio > IMBALANCE_WARNING:
        out.append(
            Problem("warning", "class_imbalance", f"the most common class has {ratio:.0f}x the boxes of the rarest")
        )
    return out


def check_source(source: str | os.PathLike, format: str = "auto", **kwargs: Any) -> tuple[HealthReport, DatasetDict]:
    """Load ``source`` (anything ``load_detection_dataset`` reads) with its splits as they are, and check it.

    The conversion's fixes come from the conversion itself, or from the ``conversion_report.json`` saved beside a
    dataset by ``detr-hf convert``."""
    from ..data.loading import load_detection_dataset  # loading pulls in every format reader

    dataset, loaded = load_detection_dataset(source, format, val_fraction=0, return_report=True, verbose=False)
    saved = Path(source) / REPORT_FILE_NAME
    conversion = ConversionReport.load(saved) if saved.is_file() else loaded
    report = check_dataset(dataset, conversion_report=conversion, source=str(source), **kwargs)
    return report, dataset
