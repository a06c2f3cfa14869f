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
    DEFAULT_MAX_IMAGE_PIXELS,
    ISSUES_COLUMN,
    KEEP_COLUMN,
    RowIssues,
    RowOptions,
    check_objects,
    generate_rows,
    make_shards,
    pil_pixel_limit_lifted,
    working_features,
)
from .decode import exif_orientation
from .formats import READERS, canonical_format, detect_format, is_saved_dataset
from .formats.base import (
    IGNORE_ALL_CLASSES,
    ReadContext,
    SourceCategory,
    SourceData,
    SourceObject,
    normalize_split_name,
)
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
    split_seed: int = 0,
    include_difficult: bool = True,
    strict: bool = False,
    verify_images: bool = True,
    image_roots: Sequence[str | os.PathLike] = (),
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
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
        val_fraction, split_seed: when the source has no validation split, about this fraction of ``train`` (0 for
            none; at least one image) becomes ``validation``: the images whose hash of ``file_name`` and
            ``split_seed`` falls below it. An image keeps its split when images are added or removed.
        include_difficult: keep VOC ``difficult`` boxes (flagged in ``objects.difficult``).
        strict: raise :class:`DatasetValidationError` on the first fix instead of fixing and reporting it.
        verify_images: decode every image (cheaply, JPEGs at 1/8 scale) so corrupt files are found now.
        image_roots: folders images may also be read from. By default an annotation naming an image outside the
            source folder and ``images_dir`` (``../../x.png``, an absolute path) raises, so a downloaded dataset
            cannot pull other files into the dataset; for a saved or Hub dataset, images stored by path must lie in
            its folder (or the ``datasets`` cache).
        max_image_pixels: images of an annotation folder with more pixels are reported ``image_undecodable``; the
            default is what PIL opens by default (it warns above half of it); ``None`` for no limit. Images beyond PIL's own limit also need
            ``PIL.Image.MAX_IMAGE_PIXELS`` raised wherever the dataset is decoded later.
        num_proc: worker processes for the image checks.
        cache_dir: where the Arrow files go (the ``datasets`` cache by default).
        return_report: also return the :class:`ConversionReport`.
        verbose: print the report.
        format_options: passed to the reader (``one_based=False`` for VOC files with 0-based corners; ``files=[...]``
            to pick COCO files), or to ``datasets.load_dataset`` for a Hub dataset.
    """
    if "seed" in format_options:
        raise TypeError(
            "load_detection_dataset(seed=...) is now split_seed=...: the validation split no longer follows the "
            "training seed"
        )
    fmt = canonical_format(format)
    path = Path(source)
    image_roots = [Path(r) for r in image_roots]
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
        if path.name.lower() == "annotations":  # COCO's layout: the dataset folder holds annotations/ and images
            image_roots.append(path.parent)
    if fmt in ("saved", "hub"):
        if fmt == "hub" and cache_dir is not None:
            format_options.setdefault("cache_dir", cache_dir)
        dataset, report = _load_existing(
            source, fmt, class_names, val_fraction, split_seed, strict, num_proc, image_roots, format_options
        )
    else:
        options = RowOptions(
            verify_images=verify_images, include_difficult=include_difficult, max_image_pixels=max_image_pixels
        )
        dataset, report = _convert(
            path, fmt, Path(images_dir) if images_dir else path, image_roots, class_names, val_fraction, split_seed,
            options, strict, num_proc, cache_dir, format_options,
        )  # fmt: skip
    if verbose:
        print(report)
    return (dataset, report) if return_report else dataset


def save_detection_dataset(
    dataset: DatasetDict | Dataset, output_dir: str | os.PathLike, report: ConversionReport | None = None
) -> Path:
    """``save_to_disk`` plus ``categories.json`` (the category mapping) and ``conversion_report.json`` beside it."""
    output_dir = Path(output_dir)
    if isinstance(dataset, DatasetDict) and not dataset:
        raise DatasetValidationError(f"nothing to save to {output_dir}: the dataset has no splits")
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
    image_roots: list[Path],
    class_names: Sequence[str] | None,
    val_fraction: float,
    split_seed: int,
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
    ctx = ReadContext(root, images_root, report, strict=strict, image_roots=image_roots)
    data = READERS[fmt](ctx, **format_options)
    out = DatasetDict()
    with tempfile.TemporaryDirectory(prefix="detr_hf_convert_") as spill_dir:
        spill = os.path.join(spill_dir, "annotations.pickles")
        names, mapping, splits = _plan(data, ctx, class_names, val_fraction, split_seed, spill)
        _refuse_empty(root, fmt, sum(map(len, splits.values())), names, report)
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
    _refuse_empty(root, fmt, report.num_images, names, report)
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
    source = {c.name: c for c in categories or []}
    mapping = CategoryMapping(
        [
            Category(label=i, name=n, source_id=source[n].source_id if n in source else None,
                     supercategory=source[n].supercategory if n in source else None)
            for i, n in enumerate(names)
        ]
    )  # fmt: skip
    records.sort(key=lambda r: r.file_name)
    splits = [r.split or "train" for r in records]
    if "validation" not in splits:
        train = [k for k, split in enumerate(splits) if split == "train"]
        chosen = carve_validation([records[k].file_name for k in train], val_fraction, split_seed, ctx.report)
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
    ordered = [s for s in _SPLIT_ORDER if s in entries] + sorted(s for s in entries if s not in _SPLIT_ORDER)
    return names, mapping, {s: entries[s] for s in ordered}


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


def _refuse_empty(source: str | Path, fmt: str, n_images: int, names: list[str], report: ConversionReport) -> None:
    """Raise when reading ``source`` as ``fmt`` gave no image or no class: nothing a model can be trained on."""
    if n_images and names:
        return
    found = f"{n_images} images and {len(names)} classes"
    issues = f"; issues: {report.kind_summary()}" if report.issue_counts else ""
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
    split_seed: int,
    strict: bool,
    num_proc: int | None,
    image_roots: list[Path],
    options: dict,
) -> tuple[DatasetDict, ConversionReport]:
    report = ConversionReport(source=str(source), format=fmt)
    roots = [*image_roots, Path(source)] if Path(source).exists() else [*image_roots, *_download_dirs(options)]
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
    if "validation" not in loaded and "train" in loaded:
        train = loaded["train"]
        chosen = carve_validation(_split_keys(train), val_fraction, split_seed, report)
        if any(chosen):
            loaded["validation"] = train.select([k for k, c in enumerate(chosen) if c])
            loaded["train"] = train.select([k for k, c in enumerate(chosen) if not c])
    out = DatasetDict()
    for split in [s for s in _SPLIT_ORDER if s in loaded] + sorted(s for s in loaded if s not in _SPLIT_ORDER):
        source_mapping = mapping or _stored_mapping(loaded[split])
        ds, issues = cast_to_detection_schema(
            loaded[split], class_names, strict=strict, num_proc=num_proc, image_roots=roots
        )
        for issue in issues:
            issue.split = split
            report.add(issue)
        if source_mapping is not None:
            set_category_mapping(ds, _remap(source_mapping, class_names_of(ds)))
        out[split] = ds
    _count(out, report)
    _refuse_empty(source, fmt, report.num_images, report.class_names, report)
    return out, report


def _split_keys(dataset: Dataset) -> list[str]:
    """What the validation split hashes, per row: ``file_name``, else ``image_id``, else the row's position."""
    for column in ("file_name", "image_id"):
        if column in dataset.column_names:
            values = dataset.select_columns([column]).with_format("arrow")[:].column(column).to_pylist()
            return [str(v) if v is not None else f"#{k}" for k, v in enumerate(values)]
    return [f"#{k}" for k in range(len(dataset))]


def _download_dirs(options: dict) -> list[Path]:
    """Where ``datasets.load_dataset`` puts a Hub dataset's files: images stored by path must lie there."""
    import datasets.config
    from huggingface_hub import constants

    dirs = [Path(datasets.config.HF_DATASETS_CACHE), Path(constants.HF_HUB_CACHE)]
    return dirs + ([Path(options["cache_dir"])] if options.get("cache_dir") else [])


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


def _image_size(value: dict) -> tuple[tuple[int, int], int]:
    """Displayed (EXIF-applied) size and EXIF orientation of an undecoded ``Image`` value, reading only the header
    (so PIL's pixel limit, which guards decoding, is not needed)."""
    source = value["path"] if value.get("bytes") is None else io.BytesIO(value["bytes"])
    with pil_pixel_limit_lifted(), PIL.Image.open(source) as im:
        w, h = im.size
        orientation = exif_orientation(im)
    return ((h, w) if orientation in SWAPPING_ORIENTATIONS else (w, h)), orientation


def _is_under(path: str, roots: Sequence[Path]) -> bool:
    path = os.path.abspath(path)
    return any(path.startswith(str(r.absolute()).rstrip(os.sep) + os.sep) for r in roots)


def _check_image_paths(dataset: Dataset, roots: Sequence[Path]) -> None:
    """Raise if an image stored by path only (no bytes) is a local file outside ``roots``: decoding it would read
    (and pushing the dataset would upload) a file that is not part of the dataset."""
    if "image" not in dataset.column_names:
        return
    for start in range(0, len(dataset), 10_000):
        column = dataset.select_columns(["image"]).with_format("arrow")[start : start + 10_000].column("image")
        if hasattr(column.type, "get_field_index"):  # {bytes, path}: only a path without bytes is read
            column = column.combine_chunks()
            by_path = pc.is_null(column.field("bytes")).to_pylist()
            paths = [p if read else None for p, read in zip(column.field("path").to_pylist(), by_path)]
        else:
            paths = column.to_pylist()
        for k, path in enumerate(paths):
            local = (path or "").split("::")[-1]
            if local and "://" not in local and not _is_under(local, roots):
                raise DatasetValidationError(
                    f"row {start + k}: image {path!r} is stored by path only, outside the dataset folder "
                    f"({', '.join(str(r) for r in roots) or 'none allowed'}): not read. Store the image bytes, or "
                    "allow its folder with image_roots=[...]"
                )


def _categories_in_range(dataset: Dataset, key: str, as_list: bool, n_classes: int) -> bool:
    """Whether every category value of the ``objects`` column is a label 0..n_classes-1."""
    for objects in dataset.select_columns(["objects"]).with_format("arrow").iter(batch_size=10_000):
        column = objects.column("objects").combine_chunks()
        cats = pc.list_flatten(column).field(key) if as_list else pc.list_flatten(column.field(key))
        if len(cats) and cats.null_count < len(cats):
            low, high = pc.min_max(cats).values()
            if low.as_py() < 0 or high.as_py() >= n_classes:
                return False
    return True


def cast_to_detection_schema(
    dataset: Dataset,
    class_names: Sequence[str] | None = None,
    *,
    strict: bool = False,
    num_proc: int | None = None,
    image_roots: Sequence[str | os.PathLike] | None = None,
) -> tuple[Dataset, list[Issue]]:
    """Bring a dataset near the schema (``categories`` for ``category``, plain ints or strings for classes, missing
    ``id``/``area``/``iscrowd``/``file_name``/``width``/``height``, list of structs) into it, checking every box.

    Boxes must be absolute COCO ``[x, y, w, h]``; an integer category outside the class list (negative, or past its
    end) is an ``unknown_class`` fix. A dataset already in the schema, with every category in range, is returned as
    it is. With ``image_roots``, images stored by path only must lie under one of them (else this raises).
    """
    issues: list[Issue] = []
    if image_roots is not None:
        _check_image_paths(dataset, [Path(r) for r in image_roots])
    inner, as_list = _objects_feature(dataset.features)
    cat_key, bbox_key = _pick(inner, _CATEGORY_KEYS, "category"), _pick(inner, _BBOX_KEYS, "bbox")
    source_names = _source_class_names(dataset, cat_key, inner[cat_key], as_list, class_names, issues)
    names = [str(n) for n in class_names] if class_names is not None else source_names
    features = detection_features(names)
    if dataset.features == features and _categories_in_range(dataset, cat_key, as_list, len(names)):
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
            actual, orientation = _image_size(image) if image else (None, 1)
            if actual is not None and size is not None and tuple(size) != actual:
                row_issues.add(
                    "size_mismatch", f"row {index}", f"width/height {size[0]}x{size[1]}, image {actual[0]}x{actual[1]}"
                )
            if orientation != 1:
                row_issues.add(
                    "exif_orientation", f"row {index}",
                    f"EXIF orientation {orientation}: boxes taken on the image as shown ({actual[0]}x{actual[1]})",
                )  # fmt: skip
            width, height = actual or size or (0, 0)
            source = []
            n = len(objects.get(bbox_key) or [])
            for j in range(n):
                record = f"row {index}, object {j}"
                category = objects[cat_key][j]
                if isinstance(category, int) and not 0 <= category < len(source_names):
                    row_issues.add(
                        "unknown_class", record, f"category {category} is not a label 0..{len(source_names) - 1}", 1
                    )
                    continue
                name = source_names[category] if isinstance(category, int) else str(category)
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
