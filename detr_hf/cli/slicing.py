"""The sliced-inference options of `detr-hf predict` and `detr-hf evaluate` (``--slice 512 --overlap 0.2``)."""

from __future__ import annotations

import argparse
from typing import Any


def add_slice_arguments(parser: argparse.ArgumentParser) -> None:
    """``--slice``, ``--overlap``, ``--merge``, ``--match-metric``, ``--no-full-image-pass``, ``--slice-batch``."""
    group = parser.add_argument_group("sliced inference (large images, small objects)")
    group.add_argument("--slice", type=int, metavar="PX", help="run on overlapping PX x PX tiles of each image at its "
                       "native resolution and merge the detections (default: the whole image, resized)")  # fmt: skip
    group.add_argument("--overlap", type=float, default=0.2, help="fraction of a tile neighbours share (default 0.2)")
    group.add_argument("--merge", choices=("nms", "nmm"), default="nmm",
                       help="nmm: merge the parts of an object cut by tiles into one box (default); nms: keep the best")  # fmt: skip
    group.add_argument("--match-metric", choices=("ios", "iou"), default="ios",
                       help="what matches two boxes when merging: intersection over the smaller (default) or IoU")  # fmt: skip
    group.add_argument("--no-full-image-pass", action="store_true",
                       help="skip the extra pass on the whole image downscaled (it finds objects larger than a tile)")  # fmt: skip
    group.add_argument("--slice-batch", type=int, default=8, help="tiles per forward pass (default 8)")


def sliced_if_asked(detector: Any, args: argparse.Namespace) -> Any:
    """``detector``, or a :class:`~detr_hf.inference.SlicedDetector` around it when ``--slice`` is given."""
    if not getattr(args, "slice", None):
        return detector
    from ..inference import SlicedDetector

    return SlicedDetector(
        detector,
        tile_size=args.slice,
        overlap=args.overlap,
        merge=args.merge,
        match_metric=args.match_metric,
        full_image_pass=not args.no_full_image_pass,
        batch_size=args.slice_batch,
    )
