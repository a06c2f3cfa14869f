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

from detr_hf.box_ops import cxcywh_to_xyxy, xywh_to_xyxy, xyxy_to_cxcywh

logger = logging.get_logger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = {"shortest_edge": 800, "longest_edge": 1333}
_SIZE_LAYOUTS = (
    ("shortest_edge", "longest_edge"),
    ("max_height", "max_width"),
    ("height", "width"),
    ("shortest_edge",),
)
_RESAMPLE_NAMES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
# ITU-R 601-2 luma, the weights PIL uses for convert("L").
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# PIL modes that carry colour in a form we do not normalize directly.
_PIL_MODE_CONVERSIONS = {
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


def standardize_size(size: int | Sequence[int] | Mapping[str, int] | None, max_size: int | None = None) -> dict:
    """Turn any accepted ``size`` spelling into one of the dicts `get_resize_output_size` understands.

    ``800`` (with ``max_size=1333``, the legacy DETR config) means ``{"shortest_edge": 800, "longest_edge": 1333}``;
    ``(h, w)`` means ``{"height": h, "width": w}``.
    """
    if size is None:
        return dict(DEFAULT_SIZE)
    if isinstance(size, int):
        return {"shortest_edge": size, "longest_edge": max_size} if max_size else {"shortest_edge": size}
    if isinstance(size, Mapping):
        given = {k: int(v) for k, v in size.items() if v is not None}
        for keys in _SIZE_LAYOUTS:
            if set(given) == set(keys):
                return given
        if max_size and set(given) == {"shortest_edge"}:
            return {**given, "longest_edge": int(max_size)}
        raise ValueError(
            f"size={dict(size)} is not understood; use one of {[dict.fromkeys(k, 0) for k in _SIZE_LAYOUTS]}"
        )
    if isinstance(size, Sequence) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    raise ValueError(f"size must be an int, a (height, width) pair or a dict, got {size!r}")


def get_resize_output_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """The ``(height, width)`` an image of ``height x width`` is resized to (same rounding as transformers' DETR).

    ``shortest_edge``/``longest_edge`` keeps the aspect ratio, scales the short side to ``shortest_edge`` unless the
    long side would then exceed ``longest_edge``; ``max_height``/``max_width`` fits the image inside that box (up or
    down); ``height``/``width`` is an exact size.
    """
    if "height" in size:
        return int(size["height"]), int(size["width"])
    if "max_height" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    short_target, long_limit = size["shortest_edge"], size.get("longest_edge")
    short_side, long_side = float(min(height, width)), float(max(height, width))
    exact_short = None
    if long_limit is not None and long_side / short_side * short_target > long_limit:
        exact_short = long_limit * short_side / long_side
        short_target = round(exact_short)
    if short_side == short_target:
        return height, width
    base = exact_short if exact_short is not None else short_target
    if width < height:
        return int(base * height / width), short_target
    return short_target, int(base * width / height)


def _as_resample(resample: Any) -> int:
    if isinstance(resample, str):
        if resample.lower() not in _RESAMPLE_NAMES:
            raise ValueError(f"resample={resample!r} is not one of {sorted(_RESAMPLE_NAMES)}")
        return _RESAMPLE_NAMES[resample.lower()]
    return int(resample)


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
        self.resample = _as_resample(resample)
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

        images = _as_image_list(images)
        if annotations is not None:
            annotations = [annotations] if isinstance(annotations, Mapping) else list(annotations)
            if len(annotations) != len(images):
                raise ValueError(f"Got {len(images)} images but {len(annotations)} annotations; pass one per image")

        num_channels = _channel_count(options["image_mean"], options["image_std"])
        resample = _as_resample(options["resample"])
        prepared = []
        for index, image in enumerate(images):
            array, white_level = _to_hwc_array(image, index, num_channels, input_data_format)
            array = _match_channels(array, num_channels, index, image)
            orig_hw = array.shape[:2]
            if min(orig_hw) < 1:
                raise ValueError(f"images[{index}] is a {_describe(image)}, an image without pixels")
            new_hw = get_resize_output_size(*orig_hw, options["size"]) if options["do_resize"] else orig_hw
            if min(new_hw) < 1:
                raise ValueError(f"images[{index}] of size {orig_hw} would be resized to {new_hw}; it is too thin")
            prepared.append((_resize(array, new_hw, resample), white_level, orig_hw))

        pixel_values, pixel_mask = self._pack(prepared, options, num_channels, return_tensors)
        data = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        if annotations is not None:
            data["labels"] = [
                self._encode_target(target, index, orig_hw, array.shape[:2], options["do_convert_annotations"])
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

    def _encode_target(
        self,
        target: Mapping[str, Any],
        index: int,
        orig_hw: tuple[int, int],
        new_hw: tuple[int, int],
        do_convert_annotations: bool,
    ) -> BatchFeature:
        """One COCO-detection target -> DETR labels (tensors), in the resized image's frame."""
        where = f"annotations[{index}]"
        if not isinstance(target, Mapping) or "annotations" not in target or "image_id" not in target:
            keys = sorted(target) if isinstance(target, Mapping) else type(target).__name__
            raise ValueError(
                f"{where} must be a dict with 'image_id' and 'annotations' (a list of COCO objects), got {keys}"
            )
        objects = []
        for j, obj in enumerate(target["annotations"]):
            if not isinstance(obj, Mapping) or "bbox" not in obj or "category_id" not in obj:
                raise ValueError(f"{where}['annotations'][{j}] needs 'bbox' and 'category_id', got {obj!r}")
            if len(obj["bbox"]) != 4:
                raise ValueError(f"{where}['annotations'][{j}]['bbox'] must be [x, y, w, h], got {obj['bbox']!r}")
            if not obj.get("iscrowd", 0):
                objects.append(obj)

        height, width = orig_hw
        new_h, new_w = new_hw
        boxes = torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32).reshape(-1, 4)
        classes = torch.tensor([int(obj["category_id"]) for obj in objects], dtype=torch.int64)
        area = torch.tensor(
            [obj["area"] if "area" in obj else obj["bbox"][2] * obj["bbox"][3] for obj in objects], dtype=torch.float32
        )
        corners = xywh_to_xyxy(boxes)
        corners[:, 0::2] = corners[:, 0::2].clamp(min=0, max=width)
        corners[:, 1::2] = corners[:, 1::2].clamp(min=0, max=height)
        keep = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
        corners, classes, area = corners[keep], classes[keep], area[keep]

        scale_w, scale_h = new_w / width, new_h / height
        if do_convert_annotations:
            # Normalized to the unpadded image, so the same numbers hold before and after resizing.
            boxes = xyxy_to_cxcywh(corners) / torch.tensor([width, height, width, height], dtype=torch.float32)
        else:
            boxes = corners * torch.tensor([scale_w, scale_h, scale_w, scale_h], dtype=torch.float32)
        return BatchFeature(
            data={
                "image_id": torch.tensor([int(target["image_id"])], dtype=torch.int64),
                "class_labels": classes,
                "boxes": boxes,
                "area": area * (scale_w * scale_h),
                "iscrowd": torch.zeros_like(classes),
                "orig_size": torch.tensor([height, width], dtype=torch.int64),
                "size": torch.tensor([new_h, new_w], dtype=torch.int64),
            }
        )

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
        threshold: float = 0.5,
        target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        top_k: int | None = 100,
    ) -> list[dict[str, torch.Tensor]]:
        """Turn raw predictions into per-image ``{"scores", "labels", "boxes"}``, best score first.

        ``outputs`` has ``logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4, normalized cxcywh). Softmax heads
        (``use_focal_loss=False``): the last logit is "no object" and each query keeps its best real class.
        Focal heads: every (query, class) pair is a candidate and the ``top_k`` best over the image are kept. Only
        scores above ``threshold`` are returned, at most ``top_k`` (None = no cap). Boxes are ``(x0, y0, x1, y1)`` in
        pixels of ``target_sizes`` (``(h, w)`` per image, normally ``labels[i]["orig_size"]``), or normalized when
        ``target_sizes`` is None.
        """
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs.logits
        pred_boxes = outputs["pred_boxes"] if isinstance(outputs, Mapping) else outputs.pred_boxes
        batch, num_queries, num_logits = logits.shape
        if target_sizes is not None and len(target_sizes) != batch:
            raise ValueError(f"target_sizes has {len(target_sizes)} entries for a batch of {batch} predictions")
        logits = logits.float()
        if self.use_focal_loss:
            prob = logits.sigmoid().flatten(1)  # (B, Q * K), index = query * K + class
            k = prob.shape[1] if top_k is None else min(top_k, prob.shape[1])
            scores, flat_index = prob.topk(k, dim=1)
            labels, query = flat_index % num_logits, flat_index // num_logits
        else:
            best, best_label = logits.softmax(-1)[..., :-1].max(-1)
            k = num_queries if top_k is None else min(top_k, num_queries)
            scores, query = best.topk(k, dim=1)
            labels = best_label.gather(1, query)
        boxes = cxcywh_to_xyxy(pred_boxes.float()).gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
        if target_sizes is not None:
            sizes = torch.as_tensor(
                [list(map(float, s)) for s in target_sizes] if not torch.is_tensor(target_sizes) else target_sizes,
                dtype=torch.float32,
                device=boxes.device,
            )
            boxes = boxes * sizes[:, [1, 0, 1, 0]].unsqueeze(1)
        results = []
        for image_scores, image_labels, image_boxes in zip(scores, labels, boxes):
            keep = image_scores > threshold
            results.append({"scores": image_scores[keep], "labels": image_labels[keep], "boxes": image_boxes[keep]})
        return results


# ---------------------------------------------------------------------- input conversion


def _channel_count(image_mean: Any, image_std: Any) -> int:
    """Channels implied by the normalization constants: a per-channel list fixes it, scalars alone mean RGB."""
    mean, std = _as_config_values(image_mean, "image_mean"), _as_config_values(image_std, "image_std")
    lengths = {len(v) for v in (mean, std) if isinstance(v, list)}
    if len(lengths) > 1:
        raise ValueError(f"image_mean has {len(mean)} values but image_std has {len(std)}; give one per channel")
    return lengths.pop() if lengths else 3


def _as_image_list(images: Any) -> list:
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("Got an empty list of images")
        return list(images)
    return [images]


def _describe(image: Any) -> str:
    if isinstance(image, PIL.Image.Image):
        return f"PIL image of mode {image.mode!r} and size {image.size[1]}x{image.size[0]}"
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"{type(image).__name__} of shape {tuple(image.shape)} and dtype {image.dtype}"
    return type(image).__name__


def _to_hwc_array(image: Any, index: int, num_channels: int, layout: str | None) -> tuple[np.ndarray, float | None]:
    """Any supported image -> (H, W, C) array (uint8, uint16 or float32) and its white level (None for float)."""
    if isinstance(image, PIL.Image.Image):
        mode = image.mode
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif mode in _PIL_MODE_CONVERSIONS:
            image = image.convert(_PIL_MODE_CONVERSIONS[mode])
        elif mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
            raise ValueError(f"images[{index}] is a {_describe(image)}, a PIL mode DetrImageProcessor cannot read")
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
                    f"images[{index}] is a {_describe(image)}: neither its first nor its last axis looks like channels "
                    f"(expected {num_channels}, or 1-4 to be converted)"
                )
        else:
            raise ValueError(f"images[{index}] is a {_describe(image)}; expected a 2-D or 3-D image")
    else:
        raise TypeError(f"images[{index}] is a {_describe(image)}; expected a PIL image, numpy array or torch tensor")

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
                f"images[{index}] is a {_describe(image)} with values in [{array.min()}, {array.max()}]; 32-bit "
                "integer images are read as 16-bit data and must lie in [0, 65535] (convert to float otherwise)"
            )
        return array.astype(np.uint16), 65535.0
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False), None
    raise ValueError(
        f"images[{index}] is a {_describe(image)}; use uint8 (8-bit), uint16 (16-bit) or floating point pixels"
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


def _match_channels(array: np.ndarray, num_channels: int, index: int, image: Any) -> np.ndarray:
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
        f"images[{index}] is a {_describe(image)} with {given} channels, but this processor takes {num_channels} "
        "(len(image_mean)); grayscale, RGB and RGBA inputs are converted for 1- and 3-channel processors, other "
        "channel counts must match"
    )


def _resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize an (H, W, C) array with PIL (8-bit stays 8-bit, like transformers; anything else in float32)."""
    height, width = size
    if array.shape[:2] == (height, width):
        return array
    if array.dtype == np.uint8 and array.shape[2] == 3:
        return np.asarray(PIL.Image.fromarray(np.ascontiguousarray(array)).resize((width, height), resample))
    if array.dtype != np.uint8:
        array = array.astype(np.float32, copy=False)
    planes = [
        np.asarray(PIL.Image.fromarray(np.ascontiguousarray(array[:, :, c])).resize((width, height), resample))
        for c in range(array.shape[2])
    ]
    return np.stack(planes, axis=-1)


# Saved configs name the class `DetrHfImageProcessor`: transformers' Auto classes resolve a processor by its class name
# first, and `DetrImageProcessor` would shadow transformers' own for every DETR checkpoint.
DetrImageProcessor = DetrHfImageProcessor

__all__ = ["DetrHfImageProcessor", "DetrImageProcessor", "get_resize_output_size", "standardize_size"]
