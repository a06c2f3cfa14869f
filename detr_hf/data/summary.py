"""The end of every conversion: the issues rows carry moved into the report, the counts per split and class, and
the refusal of a result with no image or no class (nothing a model can be trained on)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from .conversion import ISSUES_COLUMN, KEEP_COLUMN
from .formats import detect_format
from .report import ConversionReport, DatasetValidationError, Issue, SplitCounts
from .schema import class_names_of


def read_issues(dataset: Dataset, split: str | None, strict: bool) -> list[Issue]:
    """The issues in the ``_issues`` column, in row order; under ``strict`` the first fix raises."""
    issues = []
    for text in dataset.data.column(ISSUES_COLUMN).to_pylist():
        for item in json.loads(text) if text else []:
            issue = Issue(**{**item, "split": split})
            if strict and issue.is_fix:
                raise issue.as_error()
            issues.append(issue)
    return issues


def collect_issues(dataset: Dataset, split: str, report: ConversionReport, strict: bool) -> Dataset:
    """Move the ``_issues`` column into the report and drop the ``_keep=False`` rows."""
    if ISSUES_COLUMN not in dataset.column_names:
        return dataset
    for issue in read_issues(dataset, split, strict):
        report.add(issue)
    keep = dataset.data.column(KEEP_COLUMN)
    if not pc.all(keep).as_py():
        dataset = dataset.filter(lambda k: k, input_columns=KEEP_COLUMN).flatten_indices()
    return dataset.remove_columns([ISSUES_COLUMN, KEEP_COLUMN])


def count_splits(dataset: DatasetDict, report: ConversionReport) -> None:
    """Images, negatives and boxes per split and boxes per class, read from the Arrow columns (no image decoding)."""
    per_class = Counter()
    for split, ds in dataset.items():
        names = class_names_of(ds)
        lengths, labels = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if len(ds):
            objects = ds.select_columns(["objects"]).with_format("arrow")[:].column("objects").combine_chunks()
            categories = objects.field("category")
            lengths = pc.list_value_length(categories).to_numpy(zero_copy_only=False)
            labels = pc.list_flatten(categories).to_numpy(zero_copy_only=False)
        report.splits[split] = SplitCounts(
            images=len(ds), negatives=int((lengths == 0).sum()), boxes=int(lengths.sum())
        )
        for label, n in enumerate(np.bincount(labels.astype(np.int64), minlength=len(names))):
            per_class[names[label]] += int(n)
    if dataset:
        names = class_names_of(next(iter(dataset.values())))
        report.class_names = names
        report.boxes_per_class = {n: per_class[n] for n in names}


def refuse_empty(source: str | Path, fmt: str, n_images: int, names: list[str], report: ConversionReport) -> None:
    """Raise when reading ``source`` as ``fmt`` gave no image or no class: nothing a model can be trained on."""
    if n_images and names:
        return
    found = f"{n_images} images and {len(names)} classes"
    issues = f"; issues: {report.kind_summary()}" if report.issue_counts else ""
    fixes = [str(i) for i in report.issues if i.is_fix][:3]
    if fixes:
        issues += f" (first: {'; '.join(fixes)})"
    hint = ""
    if fmt not in ("saved", "hub"):
        try:
            detected = detect_format(source)
        except DatasetValidationError:
            detected = None
        if detected is not None and detected != fmt:
            hint = f"; the folder looks like {detected!r}: pass format={detected!r}"
    raise DatasetValidationError(
        f"{source}: reading it as {fmt!r} found {found}{issues}{hint}; a detection dataset needs images and a class "
        "list"
    )
