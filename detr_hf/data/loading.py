"""Entry points: an annotation folder (or a saved / Hub dataset) in, a validated ``DatasetDict`` and its report out.

:func:`load_detection_dataset` picks the path by format: annotation folders are converted by :mod:`.folders`
(readers in :mod:`.formats`, per-image checks in :mod:`.conversion`); saved and Hub datasets are cast by
:mod:`.casting`. Both end with the same counts and checks (:mod:`.summary`) and the same validation split
(:mod:`.splits`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict

from .casting import cast_to_detection_schema, load_existing
from .conversion import DEFAULT_MAX_IMAGE_PIXELS, RowOptions
from .folders import convert_folder
from .formats import canonical_format, detect_format
from .report import REPORT_FILE_NAME, ConversionReport, DatasetValidationError
from .schema import CATEGORIES_FILE_NAME, get_category_mapping

__all__ = ["cast_to_detection_schema", "convert_detection_dataset", "load_detection_dataset", "save_detection_dataset"]

_HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def load_detection_dataset(
    source: str | os.PathLike,
    format: str = "auto",
    *,
    images_dir: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    group_by: str | None = None,
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
        group_by: keep groups (patients, recordings, flights, scenes) whole in that split: a regular expression
            whose first capture group (else whole match) in ``file_name`` names the group (``r"^([^/]+)/"``: the
            first folder), or, for a saved or Hub dataset, a column. The hash is then of the group, so no group spans
            train and validation (``detr-hf check`` reports groups spanning the splits a source came with).
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
        dataset, report = load_existing(
            source, fmt, class_names, val_fraction, split_seed, strict, num_proc, image_roots, format_options,
            group_by=group_by,
        )  # fmt: skip
    else:
        options = RowOptions(
            verify_images=verify_images, include_difficult=include_difficult, max_image_pixels=max_image_pixels
        )
        dataset, report = convert_folder(
            path, fmt, Path(images_dir) if images_dir else path, image_roots, class_names, val_fraction, split_seed,
            options, strict, num_proc, cache_dir, format_options, group_by=group_by,
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
