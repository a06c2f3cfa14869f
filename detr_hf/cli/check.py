"""`detr-hf check`: a dataset's health before training (duplicates and leakage, groups spanning splits, labels).

detr-hf check data/mine --output health/ [--group-by '^([^/]+)/'] [--strict]
"""

from __future__ import annotations

import argparse
from pathlib import Path

STRICT_FAILURE = 1  # exit status of --strict on leakage or broken labels (2 is a dataset that cannot be read)


def add_check(subparsers: argparse._SubParsersAction) -> None:
    from ..data.formats import FORMATS  # keeps `detr-hf --help` fast
    from ..health.duplicates import DEFAULT_NEAR_THRESHOLD, DEFAULT_THUMB_TOLERANCE

    p = subparsers.add_parser(
        "check",
        help="dataset health: duplicates and leakage across splits, group splits, broken or unlearnable labels",
        description="Check a dataset before training: exact and near duplicates within and across splits (and "
        "validation/test images with a twin in train), groups spanning splits, and label health (zero-area, "
        "outside or duplicate boxes, boxes below the model's stride, aspect ratios, class imbalance, objects per "
        "image). Prints a short table; writes Markdown, HTML and JSON reports with plots with --output.",
    )
    p.add_argument("dataset", help="saved dataset folder, annotation folder, COCO JSON file or Hub dataset name")
    p.add_argument("--format", "-f", default="auto", choices=("auto", *FORMATS), help="source format (default: auto)")
    p.add_argument("--output", "-o", help="folder for health_report.{md,html,json}, plots and duplicate thumbnails")
    p.add_argument(
        "--strict", action="store_true", help=f"exit with status {STRICT_FAILURE} on leakage or broken labels"
    )
    p.add_argument(
        "--group-by",
        metavar="REGEX",
        help="groups that must not span splits: a regex whose first capture "
        "group in file_name names the group (e.g. '^([^/]+)/'), or a column",
    )
    p.add_argument(
        "--near-threshold",
        type=int,
        default=DEFAULT_NEAR_THRESHOLD,
        metavar="N",
        help=f"bits (of 128: phash + dhash) near duplicates may differ by (default {DEFAULT_NEAR_THRESHOLD})",
    )
    p.add_argument(
        "--thumb-tolerance",
        type=float,
        default=DEFAULT_THUMB_TOLERANCE,
        help="mean absolute difference "
        f"(0-255) of 8x8 colour thumbnails of near duplicates (default {DEFAULT_THUMB_TOLERANCE})",
    )
    p.add_argument("--no-near", action="store_true", help="exact duplicates only (no image is decoded)")
    p.add_argument("--num-proc", type=int, default=None, help="worker processes reading the images")
    p.add_argument("--model", help="a trained model or checkpoint: its stride and number of queries")
    p.add_argument("--stride", type=int, help="the model's finest stride (default 32, or the --model's)")
    p.add_argument("--num-queries", type=int, help="the model's queries (default 100, or the --model's)")
    p.add_argument("--shortest-edge", type=int, help="training resize: shortest edge (default 800, or the --model's)")
    p.add_argument(
        "--longest-edge", type=int, help="training resize: longest edge cap (default 1333, or the --model's)"
    )
    p.set_defaults(run=run_check)


def _model_settings(model: str | None) -> dict[str, int | None]:
    """Stride and queries of ``--model`` (its config), and the training resize its image processor saved."""
    if model is None:
        return {}
    from transformers import AutoConfig
    from transformers.image_processing_base import ImageProcessingMixin

    from ..health import model_stride

    config = AutoConfig.from_pretrained(model)
    out = {"stride": model_stride(config), "num_queries": int(getattr(config, "num_queries", 100))}
    try:
        size = ImageProcessingMixin.get_image_processor_dict(model)[0].get("size") or {}
    except OSError:  # no preprocessor_config.json: the defaults (or the flags) apply
        size = {}
    out.update({k: size[k] for k in ("shortest_edge", "longest_edge") if size.get(k)})
    return out


def run_check(args: argparse.Namespace) -> int:
    from ..health import check_source, save_report

    settings = {"stride": 32, "num_queries": 100, "shortest_edge": 800, "longest_edge": 1333}
    settings.update(_model_settings(args.model))
    for key in settings:  # flags win over the model's values
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    report, dataset = check_source(
        args.dataset,
        args.format,
        group_by=args.group_by,
        near_duplicates=not args.no_near,
        near_threshold=args.near_threshold,
        thumb_tolerance=args.thumb_tolerance,
        progress=True,
        num_proc=args.num_proc,
        **settings,
    )
    print(report)
    if args.output:
        paths = save_report(report, dataset, args.output)
        print(f"report written to {Path(paths['html'])} (and .md, .json)")
    return STRICT_FAILURE if args.strict and not report.ok else 0
