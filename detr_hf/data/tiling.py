"""Tiled training data: a detection split cut into overlapping tiles at native resolution, lazily.

from detr_hf.data import tile_dataset
tiles = tile_dataset(ds["train"], tile_size=512, overlap=0.2, min_visibility=0.3, empty_fraction=0.1)
print(tiles.tiling_report)            # every source box's fate, per image

The tiles are planned from the annotations alone (no pixel is decoded to plan): one row per kept tile with the
source row, its window and its objects in tile pixels. The pixels are cut when a row is read (``with_transform``);
the source image is decoded once and kept while the next rows come from the same image, so reading the tiles in
:func:`tile_order` (images shuffled, each image's tiles together) decodes a large image once per epoch and worker.

A box cut by a tile is kept (clipped to the tile) when at least ``min_visibility`` of its area is inside the tile,
and becomes an ignore region (``iscrowd=1``: neither a target nor a background to learn) otherwise. Each source box
gets one fate per image: *whole* (entirely inside some tile), *cut* (kept in some tile, whole in none) or *ignored*
(only ever an ignore region; a source crowd box too), so whole + cut + ignored == the image's boxes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset, DatasetInfo, Features, Image, List, Value

from ..box_ops import xywh_to_xyxy, xyxy_to_xywh
from ..imaging import decode_large_image
from ..tiles import clip_to_window, tile_windows
from .report import DatasetValidationError
from .schema import detection_features

__all__ = ["TileCropper", "TileSampler", "TilingReport", "tile_dataset", "tile_order", "with_tile_transform"]

FATES = ("whole", "cut", "ignored")


@dataclass
class TilingReport:
    """Counts of a tiling: per source image (image_id -> boxes and each fate), and the tiles made and kept."""

    tile_size: int
    overlap: float
    min_visibility: float
    empty_fraction: float
    per_image: dict[int, dict[str, int]] = field(default_factory=dict)
    tiles: int = 0
    tiles_with_objects: int = 0
    empty_tiles_kept: int = 0
    empty_tiles_dropped: int = 0
    ignore_regions: int = 0

    def total(self, key: str) -> int:
        return sum(counts[key] for counts in self.per_image.values())

    def __str__(self) -> str:
        lines = [
            f"Tiling report: {len(self.per_image)} images -> {self.tiles} tiles of {self.tile_size} px "
            f"(overlap {self.overlap:g}, min_visibility {self.min_visibility:g})",
            f"  tiles with objects {self.tiles_with_objects}, empty kept {self.empty_tiles_kept}, empty dropped "
            f"{self.empty_tiles_dropped} (empty_fraction {self.empty_fraction:g})",
            f"  source boxes {self.total('boxes')} = whole {self.total('whole')} + cut {self.total('cut')} + ignored "
            f"{self.total('ignored')}",
            f"  ignore regions written to tiles (iscrowd=1): {self.ignore_regions}",
        ]
        worst = sorted(self.per_image.items(), key=lambda item: -item[1]["ignored"])[:5]
        worst = [(image_id, counts) for image_id, counts in worst if counts["ignored"]]
        if worst:
            lines.append("  images with the most ignored boxes:")
            lines += [f"    image_id {i}: {c['ignored']} of {c['boxes']} boxes ignored" for i, c in worst]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in ("tile_size", "overlap", "min_visibility", "empty_fraction", "tiles")},
            "tiles_with_objects": self.tiles_with_objects,
            "empty_tiles_kept": self.empty_tiles_kept,
            "empty_tiles_dropped": self.empty_tiles_dropped,
            "ignore_regions": self.ignore_regions,
            "per_image": {str(k): v for k, v in self.per_image.items()},
        }


def _keep_empty(seed: int, image_id: int, index: int, fraction: float) -> bool:
    """A deterministic coin for each (seed, image, tile): independent of every other tile and of the row order."""
    return zlib.crc32(f"{seed}/{image_id}/{index}".encode()) / 2**32 < fraction


def tile_features(split: Dataset) -> Features:
    """The tile rows' features: the split's objects and classes, no image; the source row and the window."""
    base = detection_features(list(split.features["objects"]["category"].feature.names))
    features = {key: value for key, value in base.items() if key != "image"}
    features.update(source_index=Value("int64"), source_image_id=Value("int64"), window=List(Value("int32"), length=4))
    return Features(features)


def _plan_image(row: dict, tile_size: int, overlap: float, min_visibility: float):
    """The tiles of one source row: (window, kept object rows, ignore object rows) and the fate of each box."""
    width, height, objects = int(row["width"]), int(row["height"]), row["objects"]
    bbox = np.asarray(objects["bbox"], dtype=np.float64).reshape(-1, 4)
    if len(bbox) and (not np.isfinite(bbox).all() or (bbox[:, 2:] < 0).any()):
        raise DatasetValidationError(
            f"image_id {row['image_id']} ({row.get('file_name')}): a box is not finite or has a negative size"
        )
    boxes = xywh_to_xyxy(bbox)
    crowd = np.asarray(objects.get("iscrowd") or [0] * len(bbox), dtype=bool)
    whole = np.zeros(len(bbox), dtype=bool)
    kept = np.zeros(len(bbox), dtype=bool)
    tiles = []
    for window in tile_windows(width, height, tile_size, overlap):
        clipped, visible = clip_to_window(boxes, window)
        touches = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        keep = touches & ~crowd & (visible >= min_visibility)
        ignore = touches & ~keep
        whole |= keep & (visible >= 1.0)
        kept |= keep
        tiles.append((window, clipped, visible, np.flatnonzero(keep), np.flatnonzero(ignore)))
    fates = {"boxes": len(bbox), "whole": int(whole.sum()), "cut": int((kept & ~whole).sum())}
    fates["ignored"] = len(bbox) - fates["whole"] - fates["cut"]
    return tiles, fates


def tile_dataset(
    split: Dataset,
    tile_size: int = 512,
    overlap: float = 0.2,
    min_visibility: float = 0.3,
    empty_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """``split`` (the package schema) as a dataset of tiles, lazily cut; see the module docstring.

    Each row: ``image`` (a PIL image, cut when read), ``image_id`` (1..n over the tiles), ``width``/``height`` of
    the tile, ``file_name`` (``<source>#x0,y0``), ``objects`` in tile pixels (ignore regions as ``iscrowd=1``),
    ``source_index`` (the row in ``split``), ``source_image_id`` and ``window`` ``[x0, y0, x1, y1]`` in the source
    image. Tiles without any kept object are kept with probability ``empty_fraction`` (decided per tile from
    ``seed``). The result's ``tiling_report`` attribute (a :class:`TilingReport`) counts every box's fate.
    """
    if not 0 <= min_visibility <= 1:
        raise ValueError(f"min_visibility must be in [0, 1], got {min_visibility}")
    if not 0 <= empty_fraction <= 1:
        raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
    report = TilingReport(tile_size, overlap, min_visibility, empty_fraction)
    columns: dict[str, list] = {key: [] for key in tile_features(split)}
    rows = split.select_columns(["image_id", "width", "height", "file_name", "objects"])
    for row_index, row in enumerate(rows):
        image_id = int(row["image_id"])
        tiles, fates = _plan_image(row, tile_size, overlap, min_visibility)
        report.per_image[image_id] = fates
        objects = row["objects"]
        for index, (window, clipped, visible, keep, ignore) in enumerate(tiles):
            if len(keep):
                report.tiles_with_objects += 1
            elif _keep_empty(seed, image_id, index, empty_fraction):
                report.empty_tiles_kept += 1
            else:
                report.empty_tiles_dropped += 1
                continue
            report.ignore_regions += len(ignore)
            order = np.concatenate([keep, ignore]).astype(np.int64)
            xywh = xyxy_to_xywh(clipped[order]) if len(order) else np.zeros((0, 4))
            share = np.asarray(objects["area"], dtype=np.float64)[order] * np.minimum(visible[order], 1.0)
            cut = (visible[order] < 1.0).astype(np.int8)
            columns["objects"].append(
                {
                    "id": [objects["id"][k] for k in order],
                    "area": share.tolist(),
                    "bbox": xywh.tolist(),
                    "category": [objects["category"][k] for k in order],
                    "iscrowd": [0] * len(keep) + [1] * len(ignore),
                    "difficult": [objects["difficult"][k] for k in order],
                    "truncated": np.maximum(cut, np.asarray(objects["truncated"], np.int8)[order]).tolist(),
                }
            )
            x0, y0, x1, y1 = window
            columns["image_id"].append(len(columns["image_id"]) + 1)
            columns["width"].append(x1 - x0)
            columns["height"].append(y1 - y0)
            columns["file_name"].append(f"{row['file_name']}#{x0},{y0}")
            columns["source_index"].append(row_index)
            columns["source_image_id"].append(image_id)
            columns["window"].append(list(window))
    report.tiles = len(columns["image_id"])
    features = tile_features(split)
    tiles = Dataset.from_dict(
        columns, features=features, info=DatasetInfo(description=split.info.description, features=features)
    )
    tiles = tiles.with_transform(TileCropper(split))
    tiles.tiling_report = report
    return tiles


class TileCropper:
    """``with_transform`` body of a tile dataset: adds each row's ``image``, cut from its source image.

    The last decoded source image is kept (one per DataLoader worker: each has its own copy of this object), so
    consecutive rows of one image decode it once; ``decodes`` counts the decodes of this copy.
    """

    def __init__(self, source: Dataset):
        self.source = source.select_columns(["image", "file_name"]).cast_column("image", Image(decode=False))
        self.decodes = 0
        self._cached: tuple[int, Any] | None = None

    def _source_image(self, index: int) -> Any:
        if self._cached is None or self._cached[0] != index:
            self._cached = None  # release the previous image before decoding the next
            row = self.source[index]
            self._cached = (index, decode_large_image(row["image"], name=row["file_name"]))
            self.decodes += 1
        return self._cached[1]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images = []
        for index, window in zip(batch["source_index"], batch["window"]):
            images.append(self._source_image(int(index)).crop(tuple(int(v) for v in window)))
        return {**batch, "image": images}

    def __getstate__(self) -> dict:  # workers start without the parent's cached image
        return {**self.__dict__, "_cached": None}


def tile_order(tiles: Dataset, seed: int = 0, epoch: int = 0) -> list[int]:
    """An epoch's order of the tile rows: source images shuffled, each image's tiles together and shuffled, so a
    large image is decoded once per epoch (per worker) while the images still come in random order."""
    rng = np.random.default_rng([seed, epoch])
    sources = np.asarray(tiles.data.column("source_index").to_numpy())
    groups: dict[int, list[int]] = {}
    for row, source in enumerate(sources.tolist()):
        groups.setdefault(source, []).append(row)
    order: list[int] = []
    for source in rng.permutation(sorted(groups)).tolist():
        order += rng.permutation(groups[source]).tolist()
    return order


class TileSampler:
    """A DataLoader sampler over a tile dataset in :func:`tile_order`, reshuffled every epoch (``set_epoch``)."""

    def __init__(self, tiles: Dataset, seed: int = 0):
        self.tiles, self.seed, self.epoch = tiles, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[int]:
        order = tile_order(self.tiles, self.seed, self.epoch)
        self.epoch += 1
        return iter(order)


class _Chained:
    """The tile cropper, then another ``with_transform`` body (a class so that it pickles for workers)."""

    def __init__(self, cropper: TileCropper, then: Any):
        self.cropper, self.then = cropper, then

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return self.then(self.cropper(batch))


def with_tile_transform(dataset: Dataset, transform: Any) -> Dataset:
    """``dataset.with_transform(transform)``, keeping a tile dataset's cropping before ``transform`` (a plain
    ``with_transform`` replaces it). Any other dataset gets ``transform`` alone."""
    current = (dataset.format.get("format_kwargs") or {}).get("transform")
    if isinstance(current, _Chained):
        current = current.cropper
    if isinstance(current, TileCropper):
        return dataset.with_transform(_Chained(current, transform))
    return dataset.with_transform(transform)
