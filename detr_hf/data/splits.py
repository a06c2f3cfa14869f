"""Splits: their names, their order, and the validation split carved from ``train`` when a source has none.

The validation split is one algorithm for every source (annotation folders, saved and Hub datasets): an image goes
to ``validation`` when a seeded hash of its key (``file_name``) falls below ``val_fraction``, so it keeps its split
when other images are added or removed, on every machine. With ``group_by`` (a regular expression on the file name,
or a column), the hash is of the image's group (patient, recording, flight, scene), so a group never spans two splits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset

    from .report import ConversionReport

SPLIT_ORDER = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "trainval": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


def normalize_split_name(name: str) -> str:
    """``val``/``valid``/``dev`` -> ``validation``, ``training`` -> ``train``; anything else is made a safe name."""
    key = name.strip().lower()
    if key in _SPLIT_ALIASES:
        return _SPLIT_ALIASES[key]
    return re.sub(r"[^\w]+", "_", key).strip("_") or "train"


def split_from_text(text: str) -> str | None:
    """The split a file or folder name refers to (``instances_val2017`` -> ``validation``), if any."""
    tokens = [t for t in re.split(r"[^a-z]+", text.lower()) if t]
    for token in reversed(tokens):  # "instances_train2017": the last split-like word wins
        if token in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[token]
    return None


def ordered_splits(names: Iterable[str]) -> list[str]:
    """``names`` in the order datasets show them: train, validation, test, then the others sorted."""
    names = set(names)
    return [s for s in SPLIT_ORDER if s in names] + sorted(names - set(SPLIT_ORDER))


def _split_score(key: str, split_seed: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``split_seed`` alone (the same on every machine and run)."""
    digest = hashlib.blake2b(f"{split_seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def group_key(key: str, group_by: re.Pattern | str | None) -> str:
    """The group of the image named ``key``: the first capture group of ``group_by`` searched in it (the whole match
    when the pattern has no group); the image alone (``key`` itself) when ``group_by`` is None or does not match."""
    if group_by is None:
        return key
    pattern = re.compile(group_by) if isinstance(group_by, str) else group_by
    match = pattern.search(key)
    if match is None:
        return key
    return match.group(1) if pattern.groups and match.group(1) is not None else match.group(0)


def compile_group_by(group_by: str) -> re.Pattern:
    """``group_by`` compiled, or a :class:`DatasetValidationError` naming the bad expression."""
    from .report import DatasetValidationError  # report imports nothing from here; kept local for import order

    try:
        return re.compile(group_by)
    except re.error as e:
        raise DatasetValidationError(f"group_by={group_by!r} is not a regular expression: {e}") from None


def carve_validation(
    keys: Sequence[str],
    val_fraction: float,
    split_seed: int,
    report: ConversionReport | None = None,
    group_by: str | None = None,
    groups: Sequence[str] | None = None,
) -> list[bool]:
    """Which of the ``train`` records named by ``keys`` (file names) become ``validation``: those whose seeded hash
    falls below ``val_fraction``, so a record keeps its split when others are added or removed. At least one goes to
    validation and one stays in train when there are two or more; none when ``val_fraction`` is 0.

    With ``group_by`` (a regular expression on the key, see :func:`group_key`) or ``groups`` (each record's group,
    e.g. a column), the hash is of the group: every record of a group lands in the same split, and the fraction is of
    groups, not images. With fewer than two groups nothing goes to validation."""
    chosen = [False] * len(keys)
    unmatched = 0
    if groups is None and group_by is not None:
        pattern = compile_group_by(group_by)
        groups = [group_key(k, pattern) for k in keys]
        unmatched = sum(pattern.search(k) is None for k in keys)
    units = list(keys) if groups is None else [str(g) for g in groups]
    distinct = sorted(set(units))
    if val_fraction <= 0 or len(distinct) < 2:
        if report is not None and groups is not None and val_fraction > 0 and keys:
            report.notes.append(f"validation: none carved, all {len(keys)} train images are in one group")
        return chosen
    scores = {u: _split_score(u, split_seed) for u in distinct}
    to_validation = {u for u, score in scores.items() if score < val_fraction}
    if not to_validation:
        to_validation = {min(distinct, key=scores.__getitem__)}
    elif len(to_validation) == len(distinct):
        to_validation.discard(max(distinct, key=scores.__getitem__))
    chosen = [u in to_validation for u in units]
    if report is not None:
        by = "file names" if groups is None else f"groups ({len(to_validation)} of {len(distinct)} groups)"
        report.notes.append(
            f"validation: {sum(chosen)} of {len(keys)} train images, by a hash of their {by} "
            f"(val_fraction={val_fraction}, split_seed={split_seed}"
            + (f", group_by={group_by!r})" if group_by is not None else ")")
            + (f"; {unmatched} file names do not match group_by, each is its own group" if unmatched else "")
        )
    return chosen


def split_keys(dataset: Dataset) -> list[str]:
    """What the validation split hashes, per row: ``file_name``, else ``image_id``, else the row's position."""
    for column in ("file_name", "image_id"):
        if column in dataset.column_names:
            values = dataset.select_columns([column]).with_format("arrow")[:].column(column).to_pylist()
            return [str(v) if v is not None else f"#{k}" for k, v in enumerate(values)]
    return [f"#{k}" for k in range(len(dataset))]


def group_keys(dataset: Dataset, group_by: str) -> list[str]:
    """Each row's group: the ``group_by`` column when the dataset has one, else the regular expression ``group_by``
    applied to :func:`split_keys` (see :func:`group_key`)."""
    if group_by in dataset.column_names:
        values = dataset.select_columns([group_by]).with_format("arrow")[:].column(group_by).to_pylist()
        return [str(v) if v is not None else f"#{k}" for k, v in enumerate(values)]
    pattern = compile_group_by(group_by)
    return [group_key(k, pattern) for k in split_keys(dataset)]
