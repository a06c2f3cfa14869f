"""The detection schema every dataset in detr_hf uses: the Hub's (cppe-5) layout plus ``file_name``.

``objects`` is a dict of parallel lists, one entry per box; ``bbox`` is absolute COCO ``[x, y, w, h]`` in pixels of
the image as a person sees it (EXIF orientation applied); ``category`` is a 0-based ``ClassLabel``. ``difficult`` and
``truncated`` (Pascal VOC's flags) are always present and 0 where the source has no such flag, so the same labels give
the same dataset whatever format they came from. ``image`` decodes to RGB.

The class list keeps where it came from: a :class:`CategoryMapping` records each label's id and name in the source
(a COCO category id, a YOLO class index), so exports and evaluation can return to the source's ids. It travels in
``dataset.info.description`` (kept by ``map``/``filter``/``save_to_disk``) and as ``categories.json`` beside a saved
dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Image, List, Value

OBJECT_FIELDS = ("id", "area", "bbox", "category", "iscrowd", "difficult", "truncated")
CATEGORIES_FILE_NAME = "categories.json"
_INFO_MARKER = "detr_hf.categories="


def detection_features(class_names: list[str]) -> Features:
    """The ``datasets.Features`` of a detection dataset whose classes are ``class_names`` (index = label id)."""
    return Features(
        {
            "image_id": Value("int64"),
            "image": Image(mode="RGB"),
            "width": Value("int32"),
            "height": Value("int32"),
            "file_name": Value("string"),
            "objects": {
                "id": List(Value("int64")),
                "area": List(Value("float32")),
                "bbox": List(List(Value("float32"), length=4)),
                "category": List(ClassLabel(names=list(class_names))),
                "iscrowd": List(Value("int8")),
                "difficult": List(Value("int8")),
                "truncated": List(Value("int8")),
            },
        }
    )


def class_names_of(dataset: Dataset) -> list[str]:
    """The class names of a dataset in the detection schema."""
    return list(dataset.features["objects"]["category"].feature.names)


@dataclass(kw_only=True)
class Category:
    """A class: its name, what it was in the source, and its label in the dataset.

    Format readers describe the source's classes with ``label=None`` (the class list is settled later: the user's,
    the source's or the names found); a :class:`CategoryMapping` gives every category its label.
    """

    label: int | None = None
    name: str
    source_id: int | None = None  # the id in the source (COCO category id, YOLO class index)
    supercategory: str | None = None


@dataclass
class CategoryMapping:
    """Labels <-> the source's category ids and names. Labels without a source id export as the label itself."""

    categories: list[Category]

    @classmethod
    def for_names(cls, class_names: Sequence[str], source: Iterable[Category] | None = None) -> CategoryMapping:
        """The mapping of the class list ``class_names`` (label = position): a name keeps the source id and
        supercategory of the ``source`` category of that name, when there is one (the identity mapping otherwise)."""
        by_name = {c.name: c for c in source or ()}
        empty = Category(name="")
        return cls(
            [
                Category(label=i, name=n, source_id=by_name.get(n, empty).source_id,
                         supercategory=by_name.get(n, empty).supercategory)
                for i, n in enumerate(class_names)
            ]
        )  # fmt: skip

    @classmethod
    def default(cls, class_names: Sequence[str]) -> CategoryMapping:
        """The identity mapping: every label is its own source id."""
        return cls.for_names(class_names)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def source_id(self, label: int) -> int:
        category = self.categories[label]
        return category.source_id if category.source_id is not None else category.label

    def label_of(self, source_id: int) -> int:
        for c in self.categories:
            if (c.source_id if c.source_id is not None else c.label) == source_id:
                return c.label
        raise KeyError(f"no label has source id {source_id}")

    def to_coco_categories(self) -> list[dict]:
        """COCO's ``categories`` list, with the source's ids."""
        out = []
        for c in self.categories:
            entry = {"id": self.source_id(c.label), "name": c.name}
            if c.supercategory is not None:
                entry["supercategory"] = c.supercategory
            out.append(entry)
        return out

    def to_dict(self) -> dict:
        return {"categories": [asdict(c) for c in self.categories]}

    @classmethod
    def from_dict(cls, data: dict) -> CategoryMapping:
        return cls([Category(**c) for c in data["categories"]])

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CATEGORIES_FILE_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CategoryMapping:
        path = Path(path)
        if path.is_dir():
            path = path / CATEGORIES_FILE_NAME
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8-sig")))


def get_category_mapping(dataset: Dataset) -> CategoryMapping:
    """The mapping stored with ``dataset``, or the identity mapping on its class names when it has none."""
    names = class_names_of(dataset)
    description = dataset.info.description or ""
    for line in description.splitlines():
        if line.startswith(_INFO_MARKER):
            mapping = CategoryMapping.from_dict(json.loads(line[len(_INFO_MARKER) :]))
            if mapping.names == names:
                return mapping
    return CategoryMapping.default(names)


def set_category_mapping(dataset: Dataset, mapping: CategoryMapping) -> None:
    """Store ``mapping`` in ``dataset.info.description`` (in place; other lines of the description are kept)."""
    if mapping.names != class_names_of(dataset):
        raise ValueError(f"mapping names {mapping.names} differ from the dataset's classes {class_names_of(dataset)}")
    kept = [line for line in (dataset.info.description or "").splitlines() if not line.startswith(_INFO_MARKER)]
    kept.append(_INFO_MARKER + json.dumps(mapping.to_dict(), separators=(",", ":")))
    dataset.info.description = "\n".join(kept)
