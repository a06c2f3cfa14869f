"""Entry points: an annotation folder (or a saved / Hub dataset) in, a validated ``DatasetDict`` and its report out.

Conversion runs in two passes. The format reader parses the annotations alone (small) in this process; then
``Dataset.from_generator`` writes one row per image to Arrow, checking each image in ``num_proc`` worker processes,
so memory does not grow with the images. The cache key is a hash of the parsed annotations, the image files' sizes
and times, and the options: converting an unchanged folder twice reuses the first result, and any change is seen.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import PIL.Image
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value, load_dataset, load_from_disk
from tqdm.auto import tqdm

from .. import __version__
from .conversion import (
    ISSUES_COLUMN,
    KEEP_COLUMN,
    RowIssues,
    RowOptions,
    check_objects,
    generate_rows,
    make_shards,
    working_features,
)
from .formats import READERS, canonical_format, detect_format, is_saved_dataset
from .formats.base import ReadContext, SourceCategory, SourceData, SourceObject, normalize_split_name
from .formats.geometry import SWAPPING_ORIENTATIONS, xywh_to_xyxy
from .report import REPORT_FILE_NAME, ConversionReport, DatasetValidationError, Issue, SplitCounts
from .schema import (
    CATEGORIES_FILE_NAME,
    Category,
    CategoryMapping,
    class_names_of,
    detection_features,
    get_category_mapping,
    set_category_mapping,
)

_CACHE_VERSION = 1  # bump when rows for the same input would change
_SPLIT_ORDER = ("train", "validation", "test")
_HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


# -- public entry points ---------------------------------------------------------------------------------------------
def load_detection_dataset(
    source: str | os.PathLike,
    format: str = "auto",
    *,
    images_dir: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    include_difficult: bool = True,
    strict: bool = False,
    verify_images: bool = True,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    return_report: bool = False,
    verbose: bool = True,
    **format_options,
) -> DatasetDict | tuple[DatasetDict, ConversionReport]:
    """Load detection annotations in any supported format as a ``DatasetDict`` in the detection schema.

    Args:
        source: an annotation folder (COCO, VOC, YOLO, LabelMe, CVAT, CSV, Open Images), a COCO JSON file, a folder
            written by ``save_to_disk``, or a Hub dataset name.
        format: ``"auto"`` (detected from the folder) or one of ``detr_hf.data.formats.FORMATS``.
        images_dir: where the images are, when not in the annotation folder. ``file_name`` is relative to it.
        class_names: the class list (and its order); classes outside it are reported and dropped. By default the
            source's own list, in its order (names found, sorted, when the source has none).
        val_fraction, seed: when the source has no validation split, this fraction of ``train`` becomes
            ``validation``, chosen by ``seed`` (0 for none).
        include_difficult: keep VOC ``difficult`` boxes (flagged in ``objects.difficult``).
        strict: raise :class:`DatasetValidationError` on the first fix instead of fixing and reporting it.
        verify_images: decode every image (cheaply, JPEGs at 1/8 scale) so corrupt files are found now.
        num_proc: worker processes for the image checks.
        cache_dir: where the Arrow files go (the ``datasets`` cache by default).
        return_report: also return the :class:`ConversionReport`.
        verbose: print the report.
        format_options: passed to the reader (``one_based=False`` for VOC files with 0-based corners; ``files=[...]``
            to pick COCO files), or to ``datasets.load_dataset`` for a Hub dataset.
    """
    fmt = canonical_format(format)
    path = Path(source)
    if fmt == "auto":
        if path.exists():
            fmt = detect_format(path.parent if path.is_file() else path)
        elif _HUB_NAME.match(str(source)):
            fmt = "hub"
        else:
            raise DatasetValidationError(f"{source}: no such file or folder")
    if path.is_file():
        if fmt != "coco":
            raise DatasetValidationError(f"{source}: pass the folder holding the annotations, not a file")
        format_options.setdefault("files", [path.name])
        path = path.parent
    if fmt in ("saved", "hub"):
        if fmt == "hub" and cache_dir is not None:
            format_options.setdefault("cache_dir", cache_dir)
        dataset, report = _load_existing(source, fmt, class_names, val_fraction, seed, strict, num_proc, format_options)
    else:
        dataset, report = _convert(
            path, fmt, Path(images_dir) if images_dir else path, class_names, val_fraction, seed,
            RowOptions(verify_images=verify_images, include_difficult=include_difficult), strict,
            num_proc, cache_dir, format_options,
        )  # fmt: skip
    if verbose:
        print(report)
    return (dataset, report) if return_report else dataset


def save_detection_dataset(
    dataset: DatasetDict | Dataset, output_dir: str | os.PathLike, report: ConversionReport | None = None
) -> Path:
    """``save_to_disk`` plus ``categories.json`` (the category mapping) and ``conversion_report.json`` beside it."""
    output_dir = Path(output_dir)
    dataset.save_to_disk(str(output_dir))
    first = dataset[next(iter(dataset))] if isinstance(dataset, DatasetDict) else dataset
    get_category_mapping(first).save(output_dir)
    if report is not None:
        report.save(output_dir / REPORT_FILE_NAME)
    return output_dir


def convert_detection_dataset(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    format: str = "auto",
    *,
    push_to_hub: str | None = None,
    private: bool = False,
    **kwargs,
) -> tuple[DatasetDict, ConversionReport]:
    """:func:`load_detection_dataset`, then save it (and optionally push it) with its report and category mapping."""
    kwargs["return_report"] = True
    dataset, report = load_detection_dataset(source, format, **kwargs)
    save_detection_dataset(dataset, output_dir, report)
    if push_to_hub:
        from huggingface_hub import HfApi  # only needed to push

        dataset.push_to_hub(push_to_hub, private=private)
        api = HfApi()
        for name in (CATEGORIES_FILE_NAME, REPORT_FILE_NAME):
            api.upload_file(
                path_or_fileobj=str(Path(output_dir) / name),
                path_in_repo=name,
                repo_id=push_to_hub,
                repo_type="dataset",
            )
    return dataset, report


# -- conversion of annotation folders --------------------------------------------------------------------------------
def _convert(
    root: Path,
    fmt: str,
    images_root: Path,
    class_names: Sequence[str] | None,
    val_fraction: float,
    seed: int,
    options: RowOptions,
    strict: bool,
    num_proc: int | None,
    cache_dir: str | None,
    format_options: dict,
) -> tuple[DatasetDict, ConversionReport]:
    report = ConversionReport(source=str(root), format=fmt)
    if not root.is_dir():
        raise DatasetValidationError(f"{root}: not a folder")
    if not images_root.is_dir():
        raise DatasetValidationError(f"{images_root}: images_dir is not a folder")
    ctx = ReadContext(root, images_root, report, strict=strict)
    data = READERS[fmt](ctx, **format_options)
    out = DatasetDict()
    with tempfile.TemporaryDirectory(prefix="detr_hf_convert_") as spill_dir:
        spill = os.path.join(spill_dir, "annotations.pickles")
        names, mapping, splits = _plan(data, ctx, class_names, val_fraction, seed, spill)
        report.class_names = names
        features = detection_features(names)
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        options = replace(options, label_of={n: i for i, n in enumerate(names)}, class_list=f"[{shown}]")
        for split in list(splits):
            shards = make_shards(splits.pop(split))
            dataset = _generate(shards, spill, split, features, options, num_proc, cache_dir)
            dataset = _collect_issues(dataset, split, report, strict)
            set_category_mapping(dataset, mapping)
            out[split] = dataset
    _count(out, report)
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
    seed: int,
    spill: str,
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
        names_found.update(o.name for o in image.objects)
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
    source = {c.name: c for c in categories or []}
    mapping = CategoryMapping(
        [
            Category(label=i, name=n, source_id=source[n].source_id if n in source else None,
                     supercategory=source[n].supercategory if n in source else None)
            for i, n in enumerate(names)
        ]
    )  # fmt: skip
    records.sort(key=lambda r: r.file_name)
    next_image, next_object = max_image_id + 1, max_object_id + 1
    entries: dict[str | None, list[tuple]] = {}
    for r in records:
        image_id = r.image_id
        if image_id is None:
            image_id, next_image = next_image, next_image + 1
        first_object_id = next_object if r.needs_object_ids else 0
        next_object += r.n_objects if r.needs_object_ids else 0
        entries.setdefault(r.split, []).append((image_id, first_object_id, r.offset, r.length, r.digest))
    return names, mapping, _split(entries, val_fraction, seed, ctx.report)


def _class_names(
    class_names: Sequence[str] | None, categories: list[SourceCategory] | None, found: set[str]
) -> list[str]:
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


def _split(
    entries: dict[str | None, list], val_fraction: float, seed: int, report: ConversionReport
) -> dict[str, list]:
    """The source's splits (records without one are ``train``), plus a seeded ``validation`` carved from ``train``
    when the source has none."""
    groups: dict[str, list] = {}
    for split, items in entries.items():
        groups.setdefault(split or "train", []).extend(items)
    if "validation" not in groups and val_fraction > 0 and len(groups.get("train", [])) >= 2:
        train = groups["train"]
        n_val = min(len(train) - 1, max(1, round(len(train) * val_fraction)))
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        chosen = set(order[:n_val])
        groups["validation"] = [item for k, item in enumerate(train) if k in chosen]
        groups["train"] = [item for k, item in enumerate(train) if k not in chosen]
        report.notes.append(
            f"validation: {n_val} of {len(train)} train images (val_fraction={val_fraction}, seed={seed})"
        )
    ordered = [s for s in _SPLIT_ORDER if s in groups] + sorted(s for s in groups if s not in _SPLIT_ORDER)
    return {s: groups[s] for s in ordered}


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


def _read_issues(dataset: Dataset, split: str | None, strict: bool) -> list[Issue]:
    """The issues in the ``_issues`` column, in row order; under ``strict`` the first fix raises."""
    issues = []
    for text in dataset.data.column(ISSUES_COLUMN).to_pylist():
        for item in json.loads(text) if text else []:
            issue = Issue(**{**item, "split": split})
            if strict and issue.is_fix:
                raise issue.as_error()
            issues.append(issue)
    return issues


def _collect_issues(dataset: Dataset, split: str, report: ConversionReport, strict: bool) -> Dataset:
    """Move the ``_issues`` column into the report and drop the ``_keep=False`` rows."""
    if ISSUES_COLUMN not in dataset.column_names:
        return dataset
    for issue in _read_issues(dataset, split, strict):
        report.add(issue)
    keep = dataset.data.column(KEEP_COLUMN)
    if not pc.all(keep).as_py():
        dataset = dataset.filter(lambda k: k, input_columns=KEEP_COLUMN).flatten_indices()
    return dataset.remove_columns([ISSUES_COLUMN, KEEP_COLUMN])


def _count(dataset: DatasetDict, report: ConversionReport) -> None:
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


# -- datasets already in (or near) the schema ------------------------------------------------------------------------
def _load_existing(
    source: str | os.PathLike,
    fmt: str,
    class_names: Sequence[str] | None,
    val_fraction: float,
    seed: int,
    strict: bool,
    num_proc: int | None,
    options: dict,
) -> tuple[DatasetDict, ConversionReport]:
    report = ConversionReport(source=str(source), format=fmt)
    mapping = None
    if fmt == "saved":
        if not is_saved_dataset(Path(source)):
            raise DatasetValidationError(f"{source}: not a folder written by save_to_disk")
        loaded = load_from_disk(str(source))
        if (Path(source) / CATEGORIES_FILE_NAME).is_file():
            mapping = CategoryMapping.load(Path(source) / CATEGORIES_FILE_NAME)
    else:
        try:
            loaded = load_dataset(str(source), **options)
        except Exception as e:
            raise DatasetValidationError(
                f"{source}: not a local folder, and loading it as a Hub dataset failed: {e}"
            ) from e
        mapping = None if Path(source).exists() else _hub_mapping(str(source))
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    loaded = DatasetDict({normalize_split_name(k): v for k, v in loaded.items()})
    if "validation" not in loaded and "train" in loaded and val_fraction > 0 and len(loaded["train"]) >= 2:
        parts = loaded["train"].train_test_split(test_size=val_fraction, seed=seed)
        loaded["train"], loaded["validation"] = parts["train"], parts["test"]
        report.notes.append(
            f"validation: {len(parts['test'])} train records (val_fraction={val_fraction}, seed={seed})"
        )
    out = DatasetDict()
    for split in [s for s in _SPLIT_ORDER if s in loaded] + sorted(s for s in loaded if s not in _SPLIT_ORDER):
        source_mapping = mapping or _stored_mapping(loaded[split])
        ds, issues = cast_to_detection_schema(loaded[split], class_names, strict=strict, num_proc=num_proc)
        for issue in issues:
            issue.split = split
            report.add(issue)
        if source_mapping is not None:
            set_category_mapping(ds, _remap(source_mapping, class_names_of(ds)))
        out[split] = ds
    _count(out, report)
    return out, report


def _stored_mapping(dataset: Dataset) -> CategoryMapping | None:
    """The mapping a dataset in the schema carries in its info, if it is in the schema."""
    try:
        return get_category_mapping(dataset)
    except (KeyError, AttributeError, TypeError):  # not in the schema: no ClassLabel to read names from
        return None


def _remap(mapping: CategoryMapping, names: list[str]) -> CategoryMapping:
    """``mapping``'s source ids, matched by name, for the class list ``names`` (which may be reordered or cut)."""
    by_name = {c.name: c for c in mapping.categories}
    return CategoryMapping(
        [
            Category(label=i, name=n, source_id=by_name[n].source_id if n in by_name else None,
                     supercategory=by_name[n].supercategory if n in by_name else None)
            for i, n in enumerate(names)
        ]
    )  # fmt: skip


def _hub_mapping(repo_id: str) -> CategoryMapping | None:
    """``categories.json`` from a Hub dataset repo (written by ``detr-hf convert --push-to-hub``), if it has one."""
    try:
        from huggingface_hub import hf_hub_download

        return CategoryMapping.load(hf_hub_download(repo_id, CATEGORIES_FILE_NAME, repo_type="dataset"))
    except Exception:  # no file, no network, or not a Hub repo: the identity mapping applies
        return None


_CATEGORY_KEYS = ("category", "categories", "label", "labels", "category_id", "class")
_BBOX_KEYS = ("bbox", "bboxes", "boxes")


def _objects_feature(features: Features) -> tuple[dict, bool]:
    """The per-object sub-features, and whether ``objects`` is a list of structs (not a struct of lists)."""
    if "objects" not in features:
        raise DatasetValidationError(f"a detection dataset needs an 'objects' column; columns: {list(features)}")
    feature = features["objects"]
    if isinstance(feature, dict):
        return {k: (v.feature if isinstance(v, List) else v) for k, v in feature.items()}, False
    if isinstance(feature, List) and isinstance(feature.feature, dict):
        return dict(feature.feature), True
    raise DatasetValidationError(f"'objects' must be a struct of lists or a list of structs, got {feature}")


def _pick(keys: dict, candidates: tuple[str, ...], what: str) -> str:
    for k in candidates:
        if k in keys:
            return k
    raise DatasetValidationError(f"'objects' has no {what} field (looked for {candidates}); it has {list(keys)}")


def _source_class_names(
    dataset: Dataset, key: str, feature, as_list: bool, class_names: Sequence[str] | None, issues: list[Issue]
) -> list[str]:
    """The names the source's category values index (ClassLabel, plain ints) or are (strings)."""
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = set()
    for objects in dataset.select_columns(["objects"]).with_format("arrow").iter(batch_size=10_000):
        column = objects.column("objects").combine_chunks()
        cats = pc.list_flatten(column).field(key) if as_list else pc.list_flatten(column.field(key))
        values.update(v for v in pc.unique(cats).to_pylist() if v is not None)
    if values and all(isinstance(v, str) for v in values):
        return sorted(values)
    if class_names is not None:
        return [str(n) for n in class_names]
    issues.append(
        Issue("class_list_missing", "objects", key, "categories are plain integers; pass class_names=... to name them")
    )
    return [str(i) for i in range(int(max(values, default=-1)) + 1)]


def _image_size(value: dict | None) -> tuple[int, int] | None:
    """Displayed (EXIF-applied) size from an undecoded ``Image`` value, reading only the header."""
    if not value:
        return None
    with PIL.Image.open(value["path"] if value.get("bytes") is None else io.BytesIO(value["bytes"])) as im:
        w, h = im.size
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    return (h, w) if orientation in SWAPPING_ORIENTATIONS else (w, h)


def cast_to_detection_schema(
    dataset: Dataset,
    class_names: Sequence[str] | None = None,
    *,
    strict: bool = False,
    num_proc: int | None = None,
) -> tuple[Dataset, list[Issue]]:
    """Bring a dataset near the schema (``categories`` for ``category``, plain ints or strings for classes, missing
    ``id``/``area``/``iscrowd``/``file_name``/``width``/``height``, list of structs) into it, checking every box.

    Boxes must be absolute COCO ``[x, y, w, h]``. A dataset already in the schema is returned as it is.
    """
    issues: list[Issue] = []
    inner, as_list = _objects_feature(dataset.features)
    cat_key, bbox_key = _pick(inner, _CATEGORY_KEYS, "category"), _pick(inner, _BBOX_KEYS, "bbox")
    source_names = _source_class_names(dataset, cat_key, inner[cat_key], as_list, class_names, issues)
    names = [str(n) for n in class_names] if class_names is not None else source_names
    features = detection_features(names)
    if dataset.features == features:
        return dataset, issues
    label_of = {n: i for i, n in enumerate(names)}
    row_options = RowOptions()
    has = set(dataset.column_names)

    def convert(batch: dict, indices: list[int]) -> dict:
        out = {k: [] for k in ("image_id", "image", "width", "height", "file_name", "objects", ISSUES_COLUMN)}
        for k, index in enumerate(indices):
            objects = batch["objects"][k] or {}
            if as_list:
                objects = {key: [o.get(key) for o in objects] for key in inner}
            image = batch["image"][k] if "image" in has else None
            file_name = batch["file_name"][k] if "file_name" in has else None
            file_name = file_name or (Path(image["path"]).name if image and image.get("path") else f"row {index}")
            row_issues = RowIssues(file_name)
            size = (batch["width"][k], batch["height"][k]) if {"width", "height"} <= has else None
            actual = _image_size(image) if image else None
            if actual is not None and size is not None and tuple(size) != actual:
                row_issues.add(
                    "size_mismatch", f"row {index}", f"width/height {size[0]}x{size[1]}, image {actual[0]}x{actual[1]}"
                )
            width, height = actual or size or (0, 0)
            source = []
            n = len(objects.get(bbox_key) or [])
            for j in range(n):
                record = f"row {index}, object {j}"
                category = objects[cat_key][j]
                name = (
                    source_names[category]
                    if isinstance(category, int) and category < len(source_names)
                    else str(category)
                )
                if name not in label_of:
                    row_issues.add("unknown_class", record, f"class {name!r} is not in the class list", 1)
                    continue
                try:
                    box = xywh_to_xyxy(*(float(v) for v in objects[bbox_key][j]))
                except (TypeError, ValueError):
                    row_issues.add("malformed", record, f"bbox {objects[bbox_key][j]!r} is not [x, y, w, h]", 1)
                    continue
                flags = {f: int((objects.get(f) or [0] * n)[j] or 0) for f in ("iscrowd", "difficult", "truncated")}
                ids, areas = objects.get("id") or [None] * n, objects.get("area") or [None] * n
                source.append(
                    SourceObject(
                        name=name,
                        box=box,
                        record=record,
                        source_id=ids[j],
                        area=areas[j],
                        label=label_of[name],
                        **flags,
                    )
                )
            checked = check_objects(source, width, height, row_issues, row_options)
            # objects without ids get ids unique per row (export_coco renumbers if they ever collide)
            checked["id"] = [i if i is not None else index * 10_000 + j + 1 for j, i in enumerate(checked["id"])]
            out["image_id"].append(batch["image_id"][k] if "image_id" in has else index)
            out["image"].append(image)
            out["width"].append(width)
            out["height"].append(height)
            out["file_name"].append(file_name)
            out["objects"].append(checked)
            out[ISSUES_COLUMN].append(row_issues.to_json())
        return out

    if "image" in has:
        dataset = dataset.cast_column("image", Image(decode=False))
    target = features.copy()
    target[ISSUES_COLUMN] = Value("string")
    converted = dataset.map(
        convert, batched=True, with_indices=True, features=target, remove_columns=dataset.column_names,
        num_proc=num_proc, desc="Checking boxes",
    )  # fmt: skip
    issues.extend(_read_issues(converted, None, strict))
    return converted.remove_columns([ISSUES_COLUMN]), issues
