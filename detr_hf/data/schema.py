"""The detection schema every dataset in detr_hf uses: the Hub's (cppe-5) layout plus ``file_name``.

``objects`` is a dict of parallel lists, one entry per box; ``bbox`` is absolute COCO ``[x, y, w, h]`` in pixels of
the image as a person sees it (EXIF orientation applied); ``category`` is a 0-based ``ClassLabel``.
"""

from __future__ import annotations

from datasets import ClassLabel, Features, Image, List, Value


def detection_features(class_names: list[str]) -> Features:
    """The ``datasets.Features`` of a detection dataset whose classes are ``class_names`` (index = label id)."""
    return Features(
        {
            "image_id": Value("int64"),
            "image": Image(),
            "width": Value("int32"),
            "height": Value("int32"),
            "file_name": Value("string"),
            "objects": {
                "id": List(Value("int64")),
                "area": List(Value("float32")),
                "bbox": List(List(Value("float32"), length=4)),
                "category": List(ClassLabel(names=list(class_names))),
                "iscrowd": List(Value("int8")),
            },
        }
    )
