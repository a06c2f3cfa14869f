"""Image decoding: the one policy every part of detr_hf reads pixels by (conversion, augmentation, the image
processor, visualization and ``detr-hf predict``).

- EXIF orientation is applied (:func:`upright`): boxes are drawn on the image as a person sees it. A broken EXIF
  block reads as orientation 1 (the pixels are still fine).
- Where an 8-bit picture is needed (a stored dataset image, augmentation, prediction, a drawing), 16- and 32-bit
  integer images (PIL modes ``I``, ``I;16*``) keep their top 8 bits (``value >> 8``, as OpenCV reads them) and float
  images (``F``) are scaled by 255 when their maximum is at most 1, then clipped to 0..255 (:func:`to_8bit`). A
  plain ``convert("RGB")`` would saturate them instead (nearly every pixel of a 16-bit PNG at 255).
- Colour: a palette is applied, alpha (``RGBA``, ``LA``, ``PA``) is dropped without compositing, CMYK/YCbCr/LAB
  are converted, grayscale is repeated to 3 channels where RGB is wanted (:func:`to_rgb8`, as ``datasets``' RGB
  image feature does) or kept as one channel where the consumer takes it (augmentation, 1-channel models).
- The image processor is the one numeric reader: it keeps 16-bit data at full depth (scaled by 1/65535, so every
  depth lands in the same range) and N-channel arrays as they are; :func:`plain_mode` gives it the PIL modes it
  reads.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

__all__ = [
    "EXIF_ORIENTATION",
    "GRAY_MODES",
    "HIGH_DEPTH_MODES",
    "SWAPPING_ORIENTATIONS",
    "decode_image",
    "decode_large_image",
    "describe_image",
    "exif_orientation",
    "high_depth_to_8bit",
    "image_list",
    "match_channels",
    "open_image",
    "plain_mode",
    "shown_size",
    "to_8bit",
    "to_hwc_array",
    "to_rgb8",
    "upright",
]

EXIF_ORIENTATION = 0x0112  # the EXIF tag holding the orientation (1 = as stored)
# EXIF orientations whose transpose swaps width and height.
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
GRAY_MODES = {"1", "L", "LA"}  # kept as one channel where the consumer takes grayscale
# ITU-R 601-2 luma, the weights PIL uses for convert("L").
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# PIL modes that carry colour in a form the image processor does not read directly, and what it reads them as.
_PLAIN_MODES = {
    "1": "L",
    "La": "LA",
    "PA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


def exif_orientation(image: PIL.Image.Image) -> int:
    """The image's EXIF orientation, 1 when it has none (or a broken EXIF block: the pixels are still fine)."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:
        return 1


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` as a person sees it (its EXIF orientation applied); itself when it has none or a broken one."""
    if exif_orientation(image) == 1:
        return image
    with contextlib.suppress(Exception):  # a broken EXIF block reads as orientation 1
        return PIL.ImageOps.exif_transpose(image)
    return image


def shown_size(image: PIL.Image.Image) -> tuple[tuple[int, int], int]:
    """``((width, height), orientation)`` of the image as shown, from its header alone (no pixel is decoded)."""
    w, h = image.size
    orientation = exif_orientation(image)
    return ((h, w) if orientation in SWAPPING_ORIENTATIONS else (w, h)), orientation


def high_depth_to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """16-bit (and 32-bit) images to 8-bit the way OpenCV reads them (top 8 bits); float images in [0, 1] scaled."""
    array = np.asarray(image)
    if image.mode == "F":
        array = array * 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else array
        return PIL.Image.fromarray(np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8))
    return PIL.Image.fromarray(np.clip(array.astype(np.int64) >> 8, 0, 255).astype(np.uint8))


def to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` with 8-bit channels: high-depth modes by :func:`high_depth_to_8bit`, others unchanged."""
    return high_depth_to_8bit(image) if image.mode in HIGH_DEPTH_MODES else image


def to_rgb8(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` as 8-bit RGB (see the module docstring)."""
    return to_8bit(image).convert("RGB")


def plain_mode(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` in one of the modes the image processor reads: ``L``, ``LA``, ``RGB``, ``RGBA``, ``I``, ``I;16*``,
    ``F``. A palette becomes RGB (RGBA when it has transparency); raises ``ValueError`` for a mode it cannot read."""
    mode = image.mode
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in _PLAIN_MODES:
        return image.convert(_PLAIN_MODES[mode])
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F") or mode.startswith("I;16"):
        return image
    raise ValueError(f"PIL mode {mode!r} is not an image mode detr_hf reads")


def open_image(source: str | os.PathLike | bytes | Mapping[str, Any] | PIL.Image.Image) -> PIL.Image.Image:
    """Open ``source`` (a path, the file's bytes, a ``datasets`` image value ``{"bytes", "path"}`` or a PIL image)
    lazily: only the header is read until the pixels are used."""
    if isinstance(source, PIL.Image.Image):
        return source
    if isinstance(source, Mapping):  # datasets' Image feature with decode=False
        if source.get("bytes"):
            return PIL.Image.open(io.BytesIO(source["bytes"]))
        if source.get("path") is None:
            raise ValueError("the image has neither bytes nor a path")
        return PIL.Image.open(source["path"])
    if isinstance(source, (bytes, bytearray, memoryview)):
        return PIL.Image.open(io.BytesIO(bytes(source)))
    return PIL.Image.open(Path(source))


def decode_image(
    source: str | os.PathLike | bytes | Mapping[str, Any] | PIL.Image.Image, name: str | None = None
) -> PIL.Image.Image:
    """Decode ``source`` (see :func:`open_image`) fully into an upright 8-bit RGB image, by the module's policy.

    ``name`` is how errors refer to the image (default: the path, or ``"<bytes>"``/``"<PIL image>"``). Raises
    :class:`~detr_hf.data.report.DatasetValidationError` naming it when it is not an image or does not decode
    (truncated, corrupt): every pixel is read here, so no error can surface later.
    """
    from .data.report import DatasetValidationError  # the data package imports this module

    if isinstance(source, PIL.Image.Image):
        where = name or "<PIL image>"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        where = name or "<bytes>"
    elif isinstance(source, Mapping):
        where = name or str(source.get("path") or "<image bytes>")
    else:
        where = name or str(source)
    try:
        image = open_image(source)
        image.load()
    except FileNotFoundError:
        raise DatasetValidationError(f"{where}: no such image file") from None
    except Exception as error:  # PIL raises many types for corrupt data; all mean "does not decode"
        raise DatasetValidationError(f"{where}: does not decode as an image ({error})") from error
    return to_rgb8(upright(image))


def decode_large_image(
    source: str | os.PathLike | bytes | Mapping[str, Any] | PIL.Image.Image,
    name: str | None = None,
    max_image_pixels: int | None = None,
) -> PIL.Image.Image:
    """:func:`decode_image` for images of any size, holding one decoded copy: an 8-bit RGB image as stored (the
    common case) is returned as PIL decoded it, without the copy ``convert("RGB")`` makes; other modes and EXIF
    orientations go through :func:`decode_image`. PIL's decompression-bomb limit is replaced by
    ``max_image_pixels`` (None: no limit), which raises ``DatasetValidationError`` naming the image."""

    def error(message: str) -> Exception:
        from .data.report import DatasetValidationError  # imported on error only: the data package is heavy

        return DatasetValidationError(message)

    saved = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = None
    try:
        try:
            image = open_image(source)
        except Exception:
            return decode_image(source, name)  # its error names the image
        where = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<image>")
        if max_image_pixels is not None and image.width * image.height > max_image_pixels:
            raise error(
                f"{where}: {image.width}x{image.height} is more than max_image_pixels={max_image_pixels} pixels"
            )
        if image.mode != "RGB" or exif_orientation(image) != 1:
            return decode_image(image, where)
        try:
            image.load()
        except Exception as problem:
            raise error(f"{where}: does not decode as an image ({problem})") from problem
        return image
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = saved


# -- arrays for the image processor: any layout, depth and channel count ---------------------------------------------
def image_list(images: Any) -> list:
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("Got an empty list of images")
        return list(images)
    return [images]


def describe_image(image: Any) -> str:
    if isinstance(image, PIL.Image.Image):
        return f"PIL image of mode {image.mode!r} and size {image.size[1]}x{image.size[0]}"
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"{type(image).__name__} of shape {tuple(image.shape)} and dtype {image.dtype}"
    return type(image).__name__


def to_hwc_array(image: Any, index: int, num_channels: int, layout: str | None) -> tuple[np.ndarray, float | None]:
    """Any supported image -> (H, W, C) array (uint8, uint16 or float32) and its white level (None for float)."""
    if isinstance(image, PIL.Image.Image):
        try:
            image = plain_mode(image)
        except ValueError:
            raise ValueError(
                f"images[{index}] is a {describe_image(image)}, a PIL mode DetrImageProcessor cannot read"
            ) from None
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        channels_last = True
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        is_tensor = isinstance(image, torch.Tensor)
        if is_tensor:
            image = image.detach().cpu()
            array = (image.float() if image.dtype in (torch.bfloat16, torch.float16) else image).numpy()
        else:
            array = image
        if array.ndim == 2:
            array = array[:, :, None]
            channels_last = True
        elif array.ndim == 3:
            channels_last = _is_channels_last(array.shape, num_channels, is_tensor, layout)
            if channels_last is None:
                raise ValueError(
                    f"images[{index}] is a {describe_image(image)}: neither its first nor its last axis looks like channels "
                    f"(expected {num_channels}, or 1-4 to be converted)"
                )
        else:
            raise ValueError(f"images[{index}] is a {describe_image(image)}; expected a 2-D or 3-D image")
    else:
        raise TypeError(
            f"images[{index}] is a {describe_image(image)}; expected a PIL image, numpy array or torch tensor"
        )

    if not channels_last:
        array = array.transpose(1, 2, 0)
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint8:
        return array, 255.0
    if array.dtype == np.uint16:
        return array, 65535.0
    if array.dtype == np.int32:  # PIL mode "I": 16-bit PNG/TIFF data
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(
                f"images[{index}] is a {describe_image(image)} with values in [{array.min()}, {array.max()}]; 32-bit "
                "integer images are read as 16-bit data and must lie in [0, 65535] (convert to float otherwise)"
            )
        return array.astype(np.uint16), 65535.0
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False), None
    raise ValueError(
        f"images[{index}] is a {describe_image(image)}; use uint8 (8-bit), uint16 (16-bit) or floating point pixels"
    )


def _is_channels_last(shape: tuple[int, ...], num_channels: int, is_tensor: bool, layout: str | None) -> bool | None:
    if layout is not None:
        return layout == "channels_last"
    plausible = {1, 2, 3, 4, num_channels}
    first, last = shape[0] in plausible, shape[-1] in plausible
    if first and last:
        if (shape[0] == num_channels) != (shape[-1] == num_channels):
            return shape[-1] == num_channels
        return not is_tensor  # the conventions: numpy images are HWC, torch images CHW
    if first or last:
        return last
    return None


def match_channels(array: np.ndarray, num_channels: int, index: int, image: Any) -> np.ndarray:
    """Adapt the channel count: drop alpha, RGB -> luminance for 1-channel models; 1 -> 3 is left to broadcasting."""
    given = array.shape[2]
    if given in (2, 4) and num_channels in (1, 3):  # LA / RGBA
        array = array[:, :, :-1]
    channels = array.shape[2]
    if channels == 3 and num_channels == 1:
        return (array.astype(np.float32) @ _LUMA)[:, :, None]
    if channels == num_channels or (channels == 1 and num_channels == 3):
        return array
    raise ValueError(
        f"images[{index}] is a {describe_image(image)} with {given} channels, but this processor takes {num_channels} "
        "(len(image_mean)); grayscale, RGB and RGBA inputs are converted for 1- and 3-channel processors, other "
        "channel counts must match"
    )
