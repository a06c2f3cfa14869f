"""Splits: their names, their order, and the validation split carved from ``train`` when a source has none.

The validation split is one algorithm for every source (annotation folders, saved and Hub datasets): an image goes
to ``validation`` when a seeded hash of its key (``file_name``) falls below ``val_fraction``, so it keeps its split
when other images are added or removed, on every machine.
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


def carve_validation(
    keys: Sequence[str], val_fraction: float, split_seed: int, report: ConversionReport | None = None
) -> list[bool]:
    """Which of the ``train`` records named by ``keys`` (file names) become ``validation``: those whose seeded hash
    falls below ``val_fraction``, so a record keeps its split when others are added or removed. At least one goes to
    validation and one stays in train when there are two or more; none when ``val_fraction`` is 0."""
    chosen = [False] * len(keys)
    if val_fraction <= 0 or len(keys) < 2:
        return chosen
    scores = [_split_score(k, split_seed) for k in keys]
    chosen = [score < val_fraction for score in scores]
    if not any(chosen):
        chosen[scores.index(min(scores))] = True
    elif all(chosen):
        chosen[scores.index(max(scores))] = False
    if report is not None:
        report.notes.append(
            f"validation: {sum(chosen)} of {len(keys)} train images, by a hash of their file names "
            f"(val_fraction={val_fraction}, split_seed={split_seed})"
        )
    return chosen


def split_keys(dataset: Dataset) -> list[str]:
    """What the validation split hashes, per row: ``file_name``, else ``image_id``, else the row's position."""
    for column in ("file_name", "image_id"):
        if column in dataset.column_names:
            values = dataset.select_columns([column]).with_format("arrow")[:].column(column).to_pylist()
            return [str(v) if v is not None else f"#{k}" for k, v in enumerate(values)]
    return [f"#{k}" for k in range(len(dataset))]
