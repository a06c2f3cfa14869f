"""Detection data: annotation formats in, validated ``datasets.DatasetDict`` out (and COCO/VOC/YOLO/CSV back).

from detr_hf.data import load_detection_dataset, export_coco
ds = load_detection_dataset("path/to/export", format="auto")
export_coco(ds["validation"], "val.json")
"""

from .formats import export_dataset
from .formats.coco import export_coco
from .formats.csv_table import export_csv
from .formats.voc import export_voc
from .formats.yolo import export_yolo
from .inspect import DatasetStats, inspect_dataset, plot_dataset_stats
from .loading import (
    cast_to_detection_schema,
    convert_detection_dataset,
    load_detection_dataset,
    save_detection_dataset,
)
from .report import ConversionReport, DatasetValidationError, Issue
from .schema import (
    Category,
    CategoryMapping,
    class_names_of,
    detection_features,
    get_category_mapping,
    set_category_mapping,
)
from .synthetic import make_synthetic_dataset
from .tiling import TilingReport, tile_dataset
from .transforms import build_transforms, detr_scales, make_collate_fn, make_transform_fn

__all__ = [
    "Category",
    "CategoryMapping",
    "ConversionReport",
    "DatasetStats",
    "DatasetValidationError",
    "Issue",
    "TilingReport",
    "build_transforms",
    "cast_to_detection_schema",
    "class_names_of",
    "convert_detection_dataset",
    "detection_features",
    "detr_scales",
    "export_coco",
    "export_csv",
    "export_dataset",
    "export_voc",
    "export_yolo",
    "get_category_mapping",
    "inspect_dataset",
    "load_detection_dataset",
    "make_collate_fn",
    "make_synthetic_dataset",
    "make_transform_fn",
    "plot_dataset_stats",
    "save_detection_dataset",
    "set_category_mapping",
    "tile_dataset",
]
