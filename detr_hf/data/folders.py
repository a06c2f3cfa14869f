"""An annotation folder -> ``DatasetDict``: read the annotations, plan ids, classes and splits, then write the rows.

Conversion runs in two passes. The format reader parses the annotations alone (small) in this process, and each image
is pickled at once into a spill file (memory holds a small record per image, not its boxes); then
``Dataset.from_generator`` writes one row per image to Arrow, checking each image in ``num_proc`` worker processes
(:mod:`.conversion`), so memory does not grow with the images. The cache key is a hash of the parsed annotations, the
image files' sizes and times, and the options: converting an unchanged folder twice reuses the first result, and any
change is seen.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from datasets import Dataset, DatasetDict, Features
from tqdm.auto import tqdm

from .. import __version__
from .conversion import RowOptions, generate_rows, make_shards, working_features
from .formats import reader_of
from .formats.base import IGNORE_ALL_CLASSES, ReadContext, SourceData
from .report import REPORT_FILE_NAME, ConversionReport, DatasetValidationError
from .schema import Category, CategoryMapping, detection_features, set_category_mapping
from .splits import carve_validation, ordered_splits
from .summary import collect_issues, count_splits, refuse_empty

_CACHE_VERSION = 1  # bump when rows for the same input would change


def convert_folder(
    root: Path,
    fmt: str,
    images_root: Path,
    image_roots: list[Path],
    class_names: Sequence[str] | None,
    val_fraction: float,
    split_seed: int,
    options: RowOptions,
    strict: bool,
    num_proc: int | None,
    cache_dir: str | None,
    format_options: dict,
    group_by: str | None = None,
) -> tuple[DatasetDict, ConversionReport]:
    report = ConversionReport(source=str(root), format=fmt)
    if not root.is_dir():
        raise DatasetValidationError(f"{root}: not a folder")
    if not images_root.is_dir():
        raise DatasetValidationError(f"{images_root}: images_dir is not a folder")
    ctx = ReadContext(root, images_root, report, strict=strict, image_roots=image_roots)
    data = reader_of(fmt)(ctx, **format_options)
    out = DatasetDict()
    with tempfile.TemporaryDirectory(prefix="detr_hf_convert_") as spill_dir:
        spill = os.path.join(spill_dir, "annotations.pickles")
        names, mapping, splits = _plan(data, ctx, class_names, val_fraction, split_seed, spill, group_by)
        refuse_empty(root, fmt, sum(map(len, splits.values())), names, report)
        report.class_names = names
        features = detection_features(names)
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        options = replace(options, label_of={n: i for i, n in enumerate(names)}, class_list=f"[{shown}]")
        for split in list(splits):
            shards = make_shards(splits.pop(split))
            dataset = _generate(shards, spill, split, features, options, num_proc, cache_dir)
            dataset = collect_issues(dataset, split, report, strict)
            set_category_mapping(dataset, mapping)
            out[split] = dataset
    count_splits(out, report)
    refuse_empty(root, fmt, report.num_images, names, report)
    first = next(iter(out.values()), None)
    if first is not None and first.cache_files:
        report.save(Path(first.cache_files[0]["filename"]).parent / REPORT_FILE_NAME)
    return out, report


class _Record(NamedTuple):
    """One image while planning: what sorting, ids and splits need. The image itself waits in the spill file."""

    file_name: str
    split: str | None
    image_id: int | None
    n_objects: int
    needs_object_ids: bool
    offset: int
    length: int
    digest: bytes


def _plan(
    data: SourceData,
    ctx: ReadContext,
    class_names: Sequence[str] | None,
    val_fraction: float,
    split_seed: int,
    spill: str,
    group_by: str | None = None,
) -> tuple[list[str], CategoryMapping, dict[str, list[tuple]]]:
    """Consume the reader's images: report missing and duplicate images and pickle the others into the ``spill``
    file (memory then holds a small record per image, not its boxes); then fix the class list, give ids to images and
    boxes without one, and split. Returns, per split, the entries ``generate_rows`` takes: (image id, first box id,
    offset and length in the spill file, digest of the pickled image)."""
    records: list[_Record] = []
    spill_file = open(spill, "wb")  # noqa: SIM115 (closed below, once the reader is exhausted)
    seen: dict[str, str] = {}  # image file -> annotation file that claimed it first
    names_found: set[str] = set()
    max_image_id = max_object_id = 0
    progress = tqdm(data.images, desc="Reading annotations", unit=" images", disable=None, leave=False, mininterval=1)
    for image in progress:
        key = image.path or image.embedded_in
        if key is None:
            where = f"looked beside the annotations and under {ctx.images_root}"
            ctx.issue("missing_image", image.ann_file, image.record, f"image {image.file_name!r} not found ({where})",
                      boxes_lost=len(image.objects))  # fmt: skip
            continue
        if key in seen:
            ctx.issue("duplicate_image", image.ann_file, image.record,
                      f"{image.file_name} is already annotated in {seen[key]}; this record dropped",
                      boxes_lost=len(image.objects))  # fmt: skip
            continue
        seen[key] = image.ann_file
        names_found.update(o.name for o in image.objects if o.name != IGNORE_ALL_CLASSES)
        ids = [o.source_id for o in image.objects if o.source_id is not None]
        max_object_id = max(max_object_id, *ids) if ids else max_object_id
        max_image_id = max(max_image_id, image.image_id or 0)
        blob = pickle.dumps(image, protocol=5)
        offset = spill_file.tell()
        spill_file.write(blob)
        needs_ids = len(ids) < len(image.objects)
        digest = hashlib.blake2b(blob, digest_size=16).digest()
        records.append(
            _Record(
                image.file_name, image.split, image.image_id, len(image.objects), needs_ids, offset, len(blob), digest
            )
        )
    spill_file.close()
    del seen
    categories = data.categories or None  # read after the images: some readers fill it as they go
    names = _class_names(class_names, categories, names_found)
    mapping = CategoryMapping.for_names(names, categories)
    records.sort(key=lambda r: r.file_name)
    splits = [r.split or "train" for r in records]
    if "validation" not in splits:
        train = [k for k, split in enumerate(splits) if split == "train"]
        keys = [records[k].file_name for k in train]
        chosen = carve_validation(keys, val_fraction, split_seed, ctx.report, group_by=group_by)
        for k, to_validation in zip(train, chosen):
            splits[k] = "validation" if to_validation else "train"
    next_image, next_object = max_image_id + 1, max_object_id + 1
    entries: dict[str, list[tuple]] = {}
    for r, split in zip(records, splits):
        image_id = r.image_id
        if image_id is None:
            image_id, next_image = next_image, next_image + 1
        first_object_id = next_object if r.needs_object_ids else 0
        next_object += r.n_objects if r.needs_object_ids else 0
        entries.setdefault(split, []).append((image_id, first_object_id, r.offset, r.length, r.digest))
    return names, mapping, {s: entries[s] for s in ordered_splits(entries)}


def _class_names(class_names: Sequence[str] | None, categories: list[Category] | None, found: set[str]) -> list[str]:
    """The user's list, else the source's (in its order), else the names found on boxes, sorted."""
    if class_names is not None:
        names = [str(n) for n in class_names]
    elif categories is not None:
        names = [c.name for c in categories]
    else:
        names = sorted(found)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetValidationError(f"class names must be unique; repeated: {repeated}")
    return names


def _fingerprint(shards: list[bytes], split: str, features: Features, options: RowOptions) -> str:
    digest = hashlib.sha256()
    digest.update(pickle.dumps((_CACHE_VERSION, __version__, split, features.to_dict(), options)))
    for shard in shards:
        digest.update(shard)
    return digest.hexdigest()[:32]


def _generate(
    shards: list[bytes],
    spill: str,
    split: str,
    features: Features,
    options: RowOptions,
    num_proc: int | None,
    cache_dir: str | None,
) -> Dataset:
    if not shards:
        return Dataset.from_dict({k: [] for k in features}, features=features)
    return Dataset.from_generator(
        generate_rows,
        features=working_features(features),
        gen_kwargs={"shards": shards, "spill": spill, "options": options},
        num_proc=min(num_proc, len(shards)) if num_proc and num_proc > 1 and len(shards) > 1 else None,
        cache_dir=cache_dir,
        fingerprint=_fingerprint(shards, split, features, options),
        split=split,
    )
