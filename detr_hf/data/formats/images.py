"""Writing a dataset's image files back to a folder (for the VOC and YOLO exports)."""

from __future__ import annotations

import shutil
from pathlib import Path

from datasets import Dataset, Image


def write_image_files(dataset: Dataset, folder: str | Path) -> None:
    """Write each record's image to ``folder/<file_name>``: the stored bytes, or a copy of the file it points to.

    The original encoded bytes are written (no re-encoding), EXIF included, so the files match the dataset's
    width/height once the EXIF orientation is applied, as every reader here does.
    """
    folder = Path(folder)
    rows = dataset.select_columns(["file_name", "image"]).cast_column("image", Image(decode=False))
    for row in rows:
        target = folder / row["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        image = row["image"]
        if image.get("bytes") is not None:
            target.write_bytes(image["bytes"])
        elif image.get("path") and Path(image["path"]).resolve() != target.resolve():
            shutil.copyfile(image["path"], target)
