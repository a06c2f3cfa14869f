"""Image processor for DETR-family detectors: resize, rescale, normalize, pad, encode COCO targets, decode predictions.

It follows ``transformers.DetrImageProcessor`` (same arguments, same ``preprocessor_config.json``, same pixel values)
with three deliberate differences:

* target boxes are normalized to each image's own resized, *unpadded* size, as in facebookresearch/detr, so that
  padding a batch never changes an image's labels (transformers renormalizes to the padded size in batches);
* any channel count works: ``len(image_mean)`` is the number of channels the model takes, and grayscale, RGBA,
  palette, 16-bit and multispectral inputs are converted to it (or rejected with a message naming the image);
* ``post_process_object_detection`` also decodes sigmoid focal-loss heads (``use_focal_loss=True``) and caps the
  number of detections with ``top_k``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging

from .imaging import describe_image, image_list, match_channels, to_hwc_array
from .resizing import as_resample, get_resize_output_size, resize_array, standardize_size
from .targets import detections, encode_target, label_thresholds

logger = logging.get_logger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keys transformers writes or accepts that mean nothing here; they are dropped silently when loading a config.
_IGNORED_CONFIG_KEYS = {
    "image_processor_type",
    "feature_extractor_type",
    "processor_class",
    "auto_map",
    "default_to_square",
    "do_convert_rgb",
    "do_center_crop",
    "crop_size",
    "data_format",
    "input_data_format",
    "device",
    "disable_grouping",
    "return_segmentation_masks",
    "image_seq_length",
}
_CALL_OVERRIDES = (
    "do_resize",
    "size",
    "resample",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_pad",
    "pad_size",
    "do_convert_annotations",
    "format",
)


class DetrImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments of `DetrImageProcessor` beyond transformers' ``ImagesKwargs`` (read by ``from_dict``)."""

    format: str
    do_convert_annotations: bool
    use_focal_loss: bool


def _as_config_values(values: float | Iterable[float], name: str) -> list[float] | float:
    """A scalar or a non-empty list of floats (JSON-friendly ``image_mean`` / ``image_std``)."""
    if isinstance(values, (int, float)):
        return float(values)
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{name} must not be empty")
    return values


class DetrHfImageProcessor(BaseImageProcessor):
    r"""Prepare images (and COCO-detection targets) for a DETR-family model and decode its predictions.

    Args:
        do_resize: Resize so the image fits ``size``.
        size: ``{"shortest_edge", "longest_edge"}`` (default 800/1333), ``{"max_height", "max_width"}``,
            ``{"height", "width"}`` or ``{"shortest_edge"}``; an int or ``(h, w)`` pair is accepted too.
        resample: PIL resampling filter (``PIL.Image.Resampling`` value or name), bilinear by default.
        do_rescale: Multiply pixel values by ``rescale_factor``. The factor is meant for 8-bit data; 16-bit inputs
            are scaled by ``rescale_factor * 255 / 65535`` so that every bit depth lands in the same range.
        rescale_factor: See ``do_rescale``; 1/255 by default.
        do_normalize: Subtract ``image_mean`` and divide by ``image_std`` per channel.
        image_mean: Per-channel mean. Its length is the number of channels the model takes (3 for ImageNet
            weights, 1 for a grayscale model, N for N-band imagery).
        image_std: Per-channel standard deviation, same length as ``image_mean``.
        do_pad: Pad the batch at the bottom/right to a common size and return ``pixel_mask``.
        pad_size: Fixed ``{"height", "width"}`` to pad to instead of the largest image of the batch.
        do_convert_annotations: Return boxes as normalized ``(cx, cy, w, h)``; otherwise absolute ``(x0, y0, x1, y1)``
            in pixels of the resized image.
        format: Annotation format; only ``"coco_detection"`` is supported.
        use_focal_loss: The classification head was trained with sigmoid focal loss (Deformable-DETR style, no
            "no object" logit) rather than softmax cross-entropy; changes ``post_process_object_detection``.
        detection_thresholds: ``{label: threshold}`` (keys as strings in JSON) used when post-processing with
            ``threshold="auto"``; written by the operating-point report (docs/reports.md), copied from the model's
            config by ``load_detector``. Labels without one use 0.5.
        score_temperature: Temperature ``T`` fitted by the report: post-processed scores are
            ``sigmoid(logit(score) / T)`` (the logits divided by ``T`` for a sigmoid head). None: scores as they are.
    """

    model_input_names: ClassVar[list[str]] = ["pixel_values", "pixel_mask"]
    valid_kwargs = DetrImageProcessorKwargs

    def __init__(
        self,
        do_resize: bool = True,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int | str = PIL.Image.Resampling.BILINEAR,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_pad: bool = True,
        pad_size: Sequence[int] | Mapping[str, int] | None = None,
        do_convert_annotations: bool = True,
        format: str = "coco_detection",
        use_focal_loss: bool = False,
        detection_thresholds: Mapping[int | str, float] | None = None,
        score_temperature: float | None = None,
        **kwargs: Any,
    ) -> None:
        # Legacy DETR configs (``DetrFeatureExtractor``) spell size as ``size=800, max_size=1333``.
        max_size = kwargs.pop("max_size", None)
        do_pad = kwargs.pop("pad_and_return_pixel_mask", do_pad)
        unknown = sorted(k for k in kwargs if k not in _IGNORED_CONFIG_KEYS)
        if unknown:
            logger.warning(f"DetrImageProcessor ignores unknown arguments {unknown}")
        super().__init__()
        self.do_resize = bool(do_resize)
        self.size = standardize_size(size, max_size)
        self.resample = as_resample(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _as_config_values(IMAGENET_MEAN if image_mean is None else image_mean, "image_mean")
        self.image_std = _as_config_values(IMAGENET_STD if image_std is None else image_std, "image_std")
        self.do_pad = bool(do_pad)
        self.pad_size = None if pad_size is None else standardize_size(pad_size)
        self.do_convert_annotations = bool(do_convert_annotations)
        self.format = str(getattr(format, "value", format))
        self.use_focal_loss = bool(use_focal_loss)
        self.detection_thresholds = None if detection_thresholds is None else {
            str(int(k)): float(v) for k, v in detection_thresholds.items()
        }  # fmt: skip
        self.score_temperature = None if score_temperature is None else float(score_temperature)
        self._check_options(self.__dict__)

    # ------------------------------------------------------------------ configuration

    @property
    def num_channels(self) -> int:
        """Channels of ``pixel_values``: ``len(image_mean)`` (3 when mean and std are scalars)."""
        return _channel_count(self.image_mean, self.image_std)

    @staticmethod
    def _check_options(options: Mapping[str, Any]) -> None:
        _channel_count(options["image_mean"], options["image_std"])
        if options["format"] != "coco_detection":
            raise ValueError(
                f"format={options['format']!r} is not supported: DetrImageProcessor reads 'coco_detection' targets"
            )
        pad_size = options["pad_size"]
        if pad_size is not None and "height" not in pad_size:
            raise ValueError(f"pad_size must be {{'height': int, 'width': int}}, got {pad_size}")

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content (transformers' keys plus ``use_focal_loss``)."""
        config = {key: getattr(self, key) for key in (*_CALL_OVERRIDES, "use_focal_loss")}
        for key in ("detection_thresholds", "score_temperature"):  # written only once a report has set them
            if getattr(self, key, None) is not None:
                config[key] = getattr(self, key)
        config["image_processor_type"] = type(self).__name__
        return config

    # ------------------------------------------------------------------ preprocessing

    def __call__(
        self,
        images: Any,
        annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Preprocess one image or a list of images (PIL, numpy HWC/CHW, torch CHW/HWC; a 4-D array is a batch).

        Returns ``pixel_values`` (B, C, H, W) float32 and ``pixel_mask`` (B, H, W) int64 (1 = real pixel); with
        ``annotations`` (COCO ``{"image_id", "annotations": [{"bbox": [x, y, w, h], "category_id", ...}]}`` in pixels
        of the input image, one per image) also ``labels``, one dict of tensors per image: ``class_labels``,
        ``boxes`` (normalized cxcywh w.r.t. the image's own resized, unpadded size), ``image_id``, ``area``,
        ``iscrowd``, ``orig_size`` and ``size`` (both ``(h, w)``; ``size`` is resized and unpadded). Crowd boxes are dropped, boxes are clipped to the
        image and empty ones dropped. ``return_tensors`` is ``"pt"`` or ``"np"``. Any constructor option (``size``,
        ``do_pad``, ...) can be overridden for this call, and ``input_data_format="channels_first"|"channels_last"``
        settles the layout of ambiguous arrays.
        """
        return self.preprocess(images, annotations, return_tensors=return_tensors, **kwargs)

    def preprocess(
        self,
        images: Any,
        annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        return_tensors: str | None = "pt",
        input_data_format: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Same as calling the processor."""
        unknown = sorted(set(kwargs) - set(_CALL_OVERRIDES))
        if unknown:
            raise TypeError(
                f"DetrImageProcessor got unexpected arguments {unknown}; it accepts {list(_CALL_OVERRIDES)}"
            )
        options = {key: kwargs.get(key, getattr(self, key)) for key in _CALL_OVERRIDES}
        if "size" in kwargs:
            options["size"] = standardize_size(options["size"])
        if kwargs.get("pad_size") is not None:
            options["pad_size"] = standardize_size(options["pad_size"])
        self._check_options(options)
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        if input_data_format not in (None, "channels_first", "channels_last"):
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
            )

        images = image_list(images)
        if annotations is not None:
            annotations = [annotations] if isinstance(annotations, Mapping) else list(annotations)
            if len(annotations) != len(images):
                raise ValueError(f"Got {len(images)} images but {len(annotations)} annotations; pass one per image")

        num_channels = _channel_count(options["image_mean"], options["image_std"])
        resample = as_resample(options["resample"])
        prepared = []
        for index, image in enumerate(images):
            array, white_level = to_hwc_array(image, index, num_channels, input_data_format)
            array = match_channels(array, num_channels, index, image)
            orig_hw = array.shape[:2]
            if min(orig_hw) < 1:
                raise ValueError(f"images[{index}] is a {describe_image(image)}, an image without pixels")
            new_hw = get_resize_output_size(*orig_hw, options["size"]) if options["do_resize"] else orig_hw
            if min(new_hw) < 1:
                raise ValueError(f"images[{index}] of size {orig_hw} would be resized to {new_hw}; it is too thin")
            prepared.append((resize_array(array, new_hw, resample), white_level, orig_hw))

        pixel_values, pixel_mask = self._pack(prepared, options, num_channels, return_tensors)
        data = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        if annotations is not None:
            data["labels"] = [
                encode_target(target, index, orig_hw, array.shape[:2], options["do_convert_annotations"])
                for index, (target, (array, _, orig_hw)) in enumerate(zip(annotations, prepared))
            ]
            if return_tensors != "pt":
                for label in data["labels"]:
                    label.data = {key: value.numpy() for key, value in label.items()}
        return BatchFeature(data=data)

    def _pack(
        self, prepared: list, options: Mapping[str, Any], num_channels: int, return_tensors: str | None
    ) -> tuple[Any, Any]:
        """Rescale + normalize every resized image straight into the (padded) output buffer."""
        heights = [array.shape[0] for array, _, _ in prepared]
        widths = [array.shape[1] for array, _, _ in prepared]
        if options["do_pad"]:
            if options["pad_size"] is not None:
                out_h, out_w = options["pad_size"]["height"], options["pad_size"]["width"]
                for index, (h, w) in enumerate(zip(heights, widths)):
                    if h > out_h or w > out_w:
                        raise ValueError(
                            f"images[{index}] is {h}x{w} after resizing, larger than pad_size {out_h}x{out_w}"
                        )
            else:
                out_h, out_w = max(heights), max(widths)
            stacked = True
        else:
            out_h, out_w = (heights[0], widths[0]) if heights else (0, 0)
            stacked = len(set(heights)) <= 1 and len(set(widths)) <= 1

        mean = np.broadcast_to(np.asarray(options["image_mean"], dtype=np.float64), (num_channels,))
        std = np.broadcast_to(np.asarray(options["image_std"], dtype=np.float64), (num_channels,))
        if not options["do_normalize"]:
            mean, std = np.zeros(num_channels), np.ones(num_channels)
        if stacked:
            values = np.zeros((len(prepared), num_channels, out_h, out_w), dtype=np.float32)
            masks = np.zeros((len(prepared), out_h, out_w), dtype=np.int64)
        else:
            values, masks = [], []
        for index, (array, white_level, _) in enumerate(prepared):
            h, w = array.shape[:2]
            scale = 1.0
            if options["do_rescale"]:
                scale = options["rescale_factor"] * (255.0 / white_level if white_level else 1.0)
            # (x * scale - mean) / std, as one multiply-add; a 1-channel image broadcasts over a 3-channel model.
            gain = (scale / std).astype(np.float32)[:, None, None]
            offset = (-mean / std).astype(np.float32)[:, None, None]
            if stacked:
                target = values[index, :, :h, :w]
                masks[index, :h, :w] = 1
            else:
                target = np.empty((num_channels, h, w), dtype=np.float32)
                values.append(target)
                masks.append(np.ones((h, w), dtype=np.int64))
            np.multiply(array.transpose(2, 0, 1), gain, out=target, casting="unsafe")
            target += offset
        if return_tensors == "pt":
            if stacked:
                return torch.from_numpy(values), torch.from_numpy(masks)
            return [torch.from_numpy(v) for v in values], [torch.from_numpy(m) for m in masks]
        return values, masks

    def pad(
        self,
        pixel_values: Sequence[torch.Tensor],
        labels: Sequence[Mapping[str, Any]] | None = None,
        pad_size: Mapping[str, int] | None = None,
    ) -> BatchFeature:
        """Collate already-processed (C, H, W) images of different sizes into a padded batch with ``pixel_mask``.

        For a ``collate_fn`` after per-example preprocessing: labels need no change because their boxes are relative
        to each image's unpadded size; they are passed through as ``labels``.
        """
        pixel_values = [torch.as_tensor(v) for v in pixel_values]
        heights = [int(v.shape[-2]) for v in pixel_values]
        widths = [int(v.shape[-1]) for v in pixel_values]
        pad_size = standardize_size(pad_size) if pad_size is not None else self.pad_size
        out_h, out_w = (pad_size["height"], pad_size["width"]) if pad_size else (max(heights), max(widths))
        if max(heights) > out_h or max(widths) > out_w:
            raise ValueError(f"An image ({max(heights)}x{max(widths)} at most) is larger than pad_size {out_h}x{out_w}")
        first = pixel_values[0]
        values = first.new_zeros((len(pixel_values), first.shape[0], out_h, out_w))
        mask = torch.zeros((len(pixel_values), out_h, out_w), dtype=torch.int64, device=first.device)
        for i, (image, h, w) in enumerate(zip(pixel_values, heights, widths)):
            values[i, :, :h, :w] = image
            mask[i, :h, :w] = 1
        data = {"pixel_values": values, "pixel_mask": mask}
        if labels is not None:
            data["labels"] = list(labels)
        return BatchFeature(data=data)

    # ------------------------------------------------------------------ post-processing

    def post_process_object_detection(
        self,
        outputs: Any,
        threshold: float | str = 0.5,
        target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        top_k: int | None = 100,
    ) -> list[dict[str, torch.Tensor]]:
        """Turn raw predictions into per-image ``{"scores", "labels", "boxes"}``, best score first.

        ``outputs`` has ``logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4, normalized cxcywh). Softmax heads
        (``use_focal_loss=False``): the last logit is "no object" and each query keeps its best real class.
        Focal heads: every (query, class) pair is a candidate and the ``top_k`` best over the image are kept. Only
        scores above ``threshold`` are returned, at most ``top_k`` (None = no cap). Boxes are ``(x0, y0, x1, y1)`` in
        pixels of ``target_sizes`` (``(h, w)`` per image, normally ``labels[i]["orig_size"]``), or normalized when
        ``target_sizes`` is None. ``threshold="auto"``: each label's ``detection_thresholds`` entry (0.5 where it has
        none). A saved ``score_temperature`` rescales every score (see the class docstring).
        """
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs.logits
        pred_boxes = outputs["pred_boxes"] if isinstance(outputs, Mapping) else outputs.pred_boxes
        if isinstance(threshold, str):
            threshold = label_thresholds(threshold, getattr(self, "detection_thresholds", None), logits.shape[-1])
        temperature = getattr(self, "score_temperature", None)
        return detections(logits, pred_boxes, self.use_focal_loss, threshold, target_sizes, top_k, temperature)


# ---------------------------------------------------------------------- configuration values


def _channel_count(image_mean: Any, image_std: Any) -> int:
    """Channels implied by the normalization constants: a per-channel list fixes it, scalars alone mean RGB."""
    mean, std = _as_config_values(image_mean, "image_mean"), _as_config_values(image_std, "image_std")
    lengths = {len(v) for v in (mean, std) if isinstance(v, list)}
    if len(lengths) > 1:
        raise ValueError(f"image_mean has {len(mean)} values but image_std has {len(std)}; give one per channel")
    return lengths.pop() if lengths else 3


# Saved configs name the class `DetrHfImageProcessor`: transformers' Auto classes resolve a processor by its class name
# first, and `DetrImageProcessor` would shadow transformers' own for every DETR checkpoint.
DetrImageProcessor = DetrHfImageProcessor

__all__ = ["DetrHfImageProcessor", "DetrImageProcessor", "get_resize_output_size", "standardize_size"]
