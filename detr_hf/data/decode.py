"""An image file -> the 8-bit RGB picture a detector sees, by the same policy as dataset conversion.

- EXIF orientation is applied (the image as a person sees it, the frame boxes are drawn in).
- 16- and 32-bit integer images (PIL modes ``I``, ``I;16*``) keep their top 8 bits (``value >> 8``, as OpenCV reads
  them); float images (``F``) are scaled by 255 when their maximum is at most 1, then clipped to 0..255. A plain
  ``convert("RGB")`` would saturate them instead (nearly every pixel of a 16-bit PNG at 255).
- Every other mode goes through PIL's ``convert("RGB")``, as ``datasets``' RGB image feature does: a palette is
  applied, alpha (``RGBA``, ``LA``, ``PA``) is dropped without compositing, CMYK/YCbCr/LAB are converted, grayscale
  is repeated to 3 channels.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from .report import DatasetValidationError

__all__ = ["EXIF_ORIENTATION", "HIGH_DEPTH_MODES", "decode_image", "exif_orientation", "high_depth_to_8bit"]

EXIF_ORIENTATION = 0x0112  # the EXIF tag holding the orientation (1 = as stored)

HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def high_depth_to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """16-bit (and 32-bit) images to 8-bit the way OpenCV reads them (top 8 bits); float images in [0, 1] scaled."""
    array = np.asarray(image)
    if image.mode == "F":
        array = array * 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else array
        return PIL.Image.fromarray(np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8))
    return PIL.Image.fromarray(np.clip(array.astype(np.int64) >> 8, 0, 255).astype(np.uint8))


def exif_orientation(image: PIL.Image.Image) -> int:
    """The image's EXIF orientation, 1 when it has none (or a broken EXIF block: the pixels are still fine)."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:
        return 1


def decode_image(source: str | os.PathLike | bytes | PIL.Image.Image, name: str | None = None) -> PIL.Image.Image:
    """Decode ``source`` (a path, the file's bytes, or an opened PIL image) fully into an 8-bit RGB image.

    ``name`` is how errors refer to the image (default: the path, or ``"<bytes>"``/``"<PIL image>"``). Raises
    :class:`~detr_hf.data.report.DatasetValidationError` naming it when it is not an image or does not decode
    (truncated, corrupt): every pixel is read here, so no error can surface later.
    """
    if isinstance(source, PIL.Image.Image):
        where = name or "<PIL image>"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        where = name or "<bytes>"
    else:
        where = name or str(source)
    try:
        if isinstance(source, PIL.Image.Image):
            image = source
        elif isinstance(source, (bytes, bytearray, memoryview)):
            image = PIL.Image.open(io.BytesIO(bytes(source)))
        else:
            image = PIL.Image.open(Path(source))
        image.load()
    except FileNotFoundError:
        raise DatasetValidationError(f"{where}: no such image file") from None
    except Exception as error:  # PIL raises many types for corrupt data; all mean "does not decode"
        raise DatasetValidationError(f"{where}: does not decode as an image ({error})") from error
    with contextlib.suppress(Exception):  # a broken EXIF block: conversion reads it as orientation 1, so do the same
        image = PIL.ImageOps.exif_transpose(image)
    if image.mode in HIGH_DEPTH_MODES:
        image = high_depth_to_8bit(image)
    return image.convert("RGB")
