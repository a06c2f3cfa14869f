"""Datasets already in (or near) the detection schema: folders written by ``save_to_disk``, Hub datasets, and
:func:`cast_to_detection_schema`, which brings a dataset of another layout into the schema, checking every box."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value, load_dataset, load_from_disk

from ..box_ops import xywh_to_xyxy
from ..imaging import open_image, shown_size
from .conversion import ISSUES_COLUMN, RowIssues, RowOptions, check_objects, pil_pixel_limit_lifted
from .formats import is_saved_dataset
from .formats.base import SourceObject
from .report import ConversionReport, DatasetValidationError, Issue
from .schema import (
    CATEGORIES_FILE_NAME,
    CategoryMapping,
    class_names_of,
    detection_features,
    get_category_mapping,
    set_category_mapping,
)
from .splits import carve_validation, group_keys, normalize_split_name, ordered_splits, split_keys
from .summary import count_splits, read_issues, refuse_empty


def load_existing(
    source: str | os.PathLike,
    fmt: str,
    class_names: Sequence[str] | None,
    val_fraction: float,
    split_seed: int,
    strict: bool,
    num_proc: int | None,
    image_roots: list[Path],
    options: dict,
    group_by: str | None = None,
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
        groups = group_keys(train, group_by) if group_by is not None else None
        chosen = carve_validation(split_keys(train), val_fraction, split_seed, report, group_by, groups)
        if any(chosen):
            loaded["validation"] = train.select([k for k, c in enumerate(chosen) if c])
            loaded["train"] = train.select([k for k, c in enumerate(chosen) if not c])
    out = DatasetDict()
    for split in ordered_splits(loaded):
        source_mapping = mapping or _stored_mapping(loaded[split])
        ds, issues = cast_to_detection_schema(
            loaded[split], class_names, strict=strict, num_proc=num_proc, image_roots=roots
        )
        for issue in issues:
            issue.split = split
            report.add(issue)
        if source_mapping is not None:
            set_category_mapping(ds, CategoryMapping.for_names(class_names_of(ds), source_mapping.categories))
        out[split] = ds
    count_splits(out, report)
    refuse_empty(source, fmt, report.num_images, report.class_names, report)
    return out, report


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
    with pil_pixel_limit_lifted(), open_image(value) as im:
        return shown_size(im)


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
                    box = xywh_to_xyxy(objects[bbox_key][j])
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
    issues.extend(read_issues(converted, None, strict))
    return converted.remove_columns([ISSUES_COLUMN]), issues
