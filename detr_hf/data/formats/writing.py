"""What every exporter shares: output paths that stay inside the output folder, the crowd policy, image files.

A ``file_name`` comes from a dataset that may have been made elsewhere (a Hub dataset, a saved folder someone sent):
``../../x.png`` or ``/etc/x`` must never make an exporter write outside the folder the user gave.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from datasets import Dataset, Image

from ..report import DatasetValidationError

logger = logging.getLogger(__name__)

# What an exporter does with crowd (ignore) regions in a format that cannot mark them.
CROWD_POLICIES = ("refuse", "drop", "as_object")


def safe_relative(file_name: str, record: str = "") -> PurePosixPath:
    """``file_name`` as a relative path that cannot leave the folder it is joined to.

    Raises :class:`DatasetValidationError` for absolute paths, drive letters and ``..`` components.
    """
    text = str(file_name).replace("\\", "/")
    where = f"{record}: " if record else ""
    path = PurePosixPath(text)
    if not text or path.is_absolute() or (len(text) > 1 and text[1] == ":") or ".." in path.parts:
        raise DatasetValidationError(
            f"{where}file_name {file_name!r} is not a relative path inside the dataset folder; refusing to use it"
        )
    return path


def safe_join(folder: str | Path, file_name: str, record: str = "") -> Path:
    """``folder / file_name``, refusing any ``file_name`` that would land outside ``folder``."""
    folder = Path(folder)
    target = folder / safe_relative(file_name, record)
    root = os.path.abspath(folder)
    if not os.path.abspath(target).startswith(root + os.sep):
        raise DatasetValidationError(
            f"{record + ': ' if record else ''}{file_name!r} would be written outside {folder}"
        )
    return target


def crowd_count(dataset: Dataset) -> tuple[int, int, str | None]:
    """(crowd boxes, images holding one, the first such ``file_name``) of ``dataset``."""
    boxes, images, first = 0, 0, None
    if "iscrowd" not in dataset.features["objects"]:
        return 0, 0, None
    for row in dataset.select_columns(["file_name", "objects"]):
        n = sum(1 for flag in row["objects"].get("iscrowd") or [] if flag)
        if n:
            boxes, images = boxes + n, images + 1
            first = first or row["file_name"]
    return boxes, images, first


def check_crowd_policy(dataset: Dataset, crowd: str, format_name: str) -> int:
    """Apply the crowd policy before writing: the number of crowd boxes found.

    ``refuse`` (the default of every exporter whose format cannot mark a crowd region) raises when there is any;
    ``drop`` and ``as_object`` log how many are left out or written as ordinary boxes.
    """
    if crowd not in CROWD_POLICIES:
        raise ValueError(f"crowd={crowd!r}; choose one of {CROWD_POLICIES}")
    boxes, images, first = crowd_count(dataset)
    if not boxes:
        return 0
    if crowd == "refuse":
        raise DatasetValidationError(
            f"{boxes} crowd (ignore) region(s) in {images} image(s) (first: {first}); {format_name} cannot mark a region "
            "as ignored. Pass crowd='drop' to leave them out or crowd='as_object' to write them as ordinary boxes"
        )
    what = "left out" if crowd == "drop" else "written as ordinary boxes"
    logger.warning(
        "%s export: %d crowd region(s) in %d image(s) %s (crowd=%r)", format_name, boxes, images, what, crowd
    )
    return boxes


def keep_object(iscrowd: Sequence[int] | None, index: int, crowd: str) -> bool:
    """Whether object ``index`` is written under the policy ``crowd`` (crowd boxes only under ``as_object``)."""
    return crowd == "as_object" or not (iscrowd and index < len(iscrowd) and iscrowd[index])


def write_image_files(dataset: Dataset, folder: str | Path) -> None:
    """Write each record's image to ``folder/<file_name>``: the stored bytes, or a copy of the file it points to.

    The original encoded bytes are written (no re-encoding), EXIF included, so the files match the dataset's
    width/height once the EXIF orientation is applied, as every reader here does. A ``file_name`` that would leave
    ``folder`` raises before anything is written.
    """
    folder = Path(folder)
    rows = dataset.select_columns(["file_name", "image"]).cast_column("image", Image(decode=False))
    targets = [safe_join(folder, name, f"record {i}") for i, name in enumerate(rows["file_name"])]
    for target, row in zip(targets, rows):
        target.parent.mkdir(parents=True, exist_ok=True)
        image = row["image"]
        if image.get("bytes") is not None:
            target.write_bytes(image["bytes"])
        elif image.get("path") and Path(image["path"]).resolve() != target.resolve():
            shutil.copyfile(image["path"], target)
