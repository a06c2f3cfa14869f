"""`detr-hf convert` and `detr-hf inspect`: an annotation export to a dataset with its report, and its statistics.

detr-hf convert path/to/export --format voc --output data/mine [--val-fraction 0.1] [--push-to-hub me/mine]
detr-hf inspect data/mine
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _class_names(value: str | None) -> list[str] | None:
    """``a,b,c`` or ``@classes.txt`` (one name a line)."""
    if value is None:
        return None
    if value.startswith("@"):
        text = Path(value[1:]).read_text(encoding="utf-8-sig")
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [name.strip() for name in value.split(",") if name.strip()]


def add_convert(subparsers: argparse._SubParsersAction) -> None:
    from ..data.conversion import DEFAULT_MAX_IMAGE_PIXELS
    from ..data.formats import FORMATS  # keeps `detr-hf --help` fast

    p = subparsers.add_parser(
        "convert",
        help="convert an annotation export to a Hugging Face dataset (saved with its report)",
        description="Convert annotations (COCO, VOC, YOLO, LabelMe, CVAT, CSV, Open Images) to a dataset in the "
        "detection schema, saved with save_to_disk plus conversion_report.json and categories.json.",
    )
    p.add_argument("source", help="annotation folder, COCO JSON file, saved dataset folder or Hub dataset name")
    p.add_argument("--output", "-o", required=True, help="folder to save the dataset to")
    p.add_argument("--format", "-f", default="auto", choices=("auto", *FORMATS), help="source format (default: auto)")
    p.add_argument("--images-dir", help="folder holding the images, when not in the source folder")
    p.add_argument("--class-names", help="class list and order: 'a,b,c' or '@file' (one name a line)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of train for validation when the source "
                   "has no validation split (default 0.1; 0 for none)")  # fmt: skip
    p.add_argument("--split-seed", "--seed", type=int, default=0, help="seed of the validation split (default 0): "
                   "file names are hashed with it, so images keep their split when others are added")  # fmt: skip
    p.add_argument("--group-by", metavar="REGEX", help="keep groups whole when carving validation: a regex whose first "
                   "capture group in file_name names the group, e.g. '^([^/]+)/' (or a column of a saved dataset)")  # fmt: skip
    p.add_argument("--image-root", action="append", default=[], metavar="DIR", help="a folder outside the source "
                   "folder that annotations may name images in (repeatable); others are refused")  # fmt: skip
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, help="larger images are "
                   f"reported undecodable (default {DEFAULT_MAX_IMAGE_PIXELS}, PIL's limit; 0 for none)")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="fail on the first fix instead of fixing and reporting it")
    p.add_argument("--exclude-difficult", action="store_true", help="leave out VOC 'difficult' boxes")
    p.add_argument("--no-verify-images", action="store_true", help="skip decoding each image (faster, less safe)")
    p.add_argument("--voc-zero-based", action="store_true", help="VOC corners are 0-based (CVAT/Datumaro exports)")
    p.add_argument("--num-proc", type=int, default=None, help="worker processes for the image checks")
    p.add_argument("--cache-dir", help="datasets cache folder for the intermediate Arrow files")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="also push the dataset to this Hub dataset repo")
    p.add_argument("--private", action="store_true", help="make the pushed Hub repo private")
    p.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ..data.loading import convert_detection_dataset

    options = {"one_based": False} if args.voc_zero_based else {}
    _, report = convert_detection_dataset(
        args.source,
        args.output,
        args.format,
        push_to_hub=args.push_to_hub,
        private=args.private,
        images_dir=args.images_dir,
        class_names=_class_names(args.class_names),
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        group_by=args.group_by,
        strict=args.strict,
        include_difficult=not args.exclude_difficult,
        verify_images=not args.no_verify_images,
        image_roots=args.image_root,
        max_image_pixels=args.max_image_pixels or None,
        num_proc=args.num_proc,
        cache_dir=args.cache_dir,
        verbose=True,
        **options,
    )
    print(f"saved to {args.output} ({report.num_images} images, {report.num_boxes} boxes, {report.num_fixes} fixes)")
    return 0


def add_inspect(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="counts, boxes per class, box sizes; saves a plot",
        description="Print a dataset's statistics (images, negatives, boxes per class, COCO small/medium/large, box "
        "sizes) and save them as a PNG plot.",
    )
    p.add_argument("dataset", help="saved dataset folder (or any source load_detection_dataset reads)")
    p.add_argument("--plot", help="PNG to write (default: <dataset>/dataset_stats.png, or ./dataset_stats.png)")
    p.add_argument("--no-plot", action="store_true", help="print only")
    p.add_argument("--json", dest="json_path", help="also write the statistics as JSON here")
    p.add_argument("--num-queries", type=int, default=100, help="the model's query budget, to compare the objects "
                   "per image with (default 100, DETR's)")  # fmt: skip
    p.set_defaults(run=run_inspect)


def print_scene_density(stats, num_queries: int) -> None:
    """Objects per image (max, p99) of each split against ``num_queries``, warning when a scene may exceed it."""
    from ..data.density import scene_density

    for name, split in stats.splits.items():
        print(f"{name}: {scene_density(split.boxes_per_image, num_queries)}")


def run_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import inspect_dataset, plot_dataset_stats

    stats = inspect_dataset(args.dataset)
    print(stats)
    print_scene_density(stats, args.num_queries)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(stats.to_dict(), indent=2), encoding="utf-8")
    if not args.no_plot:
        source = Path(args.dataset)
        default = source / "dataset_stats.png" if source.is_dir() else Path("dataset_stats.png")
        path = plot_dataset_stats(stats, args.plot or default, title=source.name)
        print(f"plot saved to {path}")
    return 0
