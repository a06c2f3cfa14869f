"""tile_dataset: every box accounted for (whole + cut + ignored == source), the tiles' pixels and objects, empties."""

from __future__ import annotations

import io

import numpy as np
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detr_hf.data import detection_features, make_transform_fn, tile_dataset
from detr_hf.data.tiling import tile_order, with_tile_transform
from detr_hf.tiles import clip_to_window, tile_windows

SIZE = 300
_RNG = np.random.default_rng(0)
_PIXELS = _RNG.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


_PNG = _png(_PIXELS)


def _split(images: list[list[tuple[float, float, float, float]]], crowd: list[list[int]] | None = None) -> Dataset:
    """One SIZE x SIZE image per entry with the given xywh boxes (class = index % 2)."""
    rows = {k: [] for k in ("image_id", "image", "width", "height", "file_name", "objects")}
    for i, boxes in enumerate(images):
        n = len(boxes)
        rows["image_id"].append(i + 1)
        rows["image"].append({"bytes": _PNG, "path": None})
        rows["width"].append(SIZE)
        rows["height"].append(SIZE)
        rows["file_name"].append(f"img{i}.png")
        rows["objects"].append(
            {
                "id": list(range(1, n + 1)),
                "area": [w * h for _, _, w, h in boxes],
                "bbox": [list(b) for b in boxes],
                "category": [k % 2 for k in range(n)],
                "iscrowd": crowd[i] if crowd else [0] * n,
                "difficult": [0] * n,
                "truncated": [0] * n,
            }
        )
    return Dataset.from_dict(rows, features=detection_features(["a", "b"]))


def _border_boxes(tile: int, overlap: float) -> list[tuple[float, float, float, float]]:
    """Boxes straddling every inner tile edge, one across a corner, one inside the overlap, one tiny sliver."""
    edges = sorted({x for x0, _, x1, _ in tile_windows(SIZE, SIZE, tile, overlap) for x in (x0, x1)} - {0, SIZE})
    boxes = [(e - 10, 40 + 30 * k, 20, 12) for k, e in enumerate(edges)]  # half in, half out
    boxes += [(60 + 30 * k, e - 3, 15, 30) for k, e in enumerate(edges)]  # 10 % in one tile
    boxes += [(edges[0] - 6, edges[0] - 6, 12, 12), (edges[0] - 2, 200, 40, 5), (5, 5, 8, 8)]
    return boxes


def _check_accounting(tiles, split, min_visibility):
    report = tiles.tiling_report
    per_image_sources = {row["image_id"]: len(row["objects"]["bbox"]) for row in split}
    for image_id, counts in report.per_image.items():
        assert counts["whole"] + counts["cut"] + counts["ignored"] == counts["boxes"] == per_image_sources[image_id]
    # every tile lists each box it touches, kept (>= min_visibility inside) or as an ignore region: none dropped
    for row in tiles.with_format(None):
        source = split[row["source_index"]]["objects"]
        boxes = np.asarray(source["bbox"], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        _, visible = clip_to_window(boxes, row["window"])
        crowd = np.asarray(source["iscrowd"], dtype=bool)
        want_kept = sorted(np.asarray(source["id"])[(visible >= min_visibility) & (visible > 0) & ~crowd].tolist())
        want_ignored = sorted(np.asarray(source["id"])[(visible > 0) & ((visible < min_visibility) | crowd)].tolist())
        objects = row["objects"]
        kept = sorted(i for i, c in zip(objects["id"], objects["iscrowd"]) if not c)
        ignored = sorted(i for i, c in zip(objects["id"], objects["iscrowd"]) if c)
        assert (kept, ignored) == (want_kept, want_ignored)
        w, h = row["width"], row["height"]
        assert all(x >= 0 and y >= 0 and x + bw <= w + 1e-4 and y + bh <= h + 1e-4 for x, y, bw, bh in objects["bbox"])


def test_boxes_on_tile_borders_are_all_accounted_for():
    boxes = _border_boxes(128, 0.2)
    split = _split([boxes, boxes[:3], []], crowd=[[0] * (len(boxes) - 1) + [1], [0, 0, 0], []])
    tiles = tile_dataset(split, tile_size=128, overlap=0.2, min_visibility=0.3, empty_fraction=1.0)
    _check_accounting(tiles, split, 0.3)
    counts = tiles.tiling_report.per_image[1]
    assert counts["cut"] > 0 and counts["ignored"] >= 1 and counts["whole"] > 0  # all three fates occur
    assert "source boxes" in str(tiles.tiling_report)
    assert tiles.tiling_report.tiles == len(tiles) == 3 * len(tile_windows(SIZE, SIZE, 128, 0.2))  # all kept


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    boxes=st.lists(
        st.tuples(st.integers(0, SIZE - 2), st.integers(0, SIZE - 2), st.integers(1, 120), st.integers(1, 120)).map(
            lambda b: (b[0], b[1], min(b[2], SIZE - b[0]), min(b[3], SIZE - b[1]))
        ),
        max_size=12,
    ),
    tile=st.sampled_from([64, 100, 128, 300, 512]),
    overlap=st.sampled_from([0.0, 0.2, 0.5]),
    min_visibility=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_accounting_holds_for_any_boxes(boxes, tile, overlap, min_visibility):
    split = _split([boxes])
    tiles = tile_dataset(split, tile_size=tile, overlap=overlap, min_visibility=min_visibility, empty_fraction=1.0)
    _check_accounting(tiles, split, min_visibility)


def test_tile_pixels_are_the_source_crop_and_decoded_once_per_image():
    split = _split([[(10, 10, 20, 20)], [(200, 200, 30, 30)]])
    tiles = tile_dataset(split, tile_size=128, overlap=0.25, empty_fraction=1.0)
    cropper = tiles.format["format_kwargs"]["transform"]
    order = tile_order(tiles, seed=3)
    assert sorted(order) == list(range(len(tiles)))
    for index in order:
        row = tiles[index]
        x0, y0, x1, y1 = row["window"]
        np.testing.assert_array_equal(np.asarray(row["image"]), _PIXELS[y0:y1, x0:x1])
    assert cropper.decodes == 2  # one decode per source image when read in tile_order


def test_empty_tiles_kept_by_fraction_deterministically():
    split = _split([[(10, 10, 20, 20)]] * 6)
    counts, kept = [], []
    for fraction, seed in ((0.0, 0), (0.5, 0), (0.5, 0), (0.5, 1), (1.0, 0)):
        tiles = tile_dataset(split, tile_size=64, overlap=0.0, empty_fraction=fraction, seed=seed)
        report = tiles.tiling_report
        counts.append(report.empty_tiles_kept)
        kept.append({(r["source_index"], tuple(r["window"])) for r in tiles.with_format(None)})
        assert report.empty_tiles_kept + report.empty_tiles_dropped + report.tiles_with_objects == 6 * 25
    total_empty = 6 * 24
    assert counts[0] == 0 and counts[-1] == total_empty and kept[1] == kept[2]
    assert 0.3 * total_empty < counts[1] < 0.7 * total_empty and kept[1] != kept[3]


def test_tiles_feed_the_training_transform():
    split = _split([[(100, 100, 30, 30), (250, 10, 40, 40)]])
    tiles = tile_dataset(split, tile_size=128, overlap=0.2, empty_fraction=0.0)
    ready = with_tile_transform(tiles, make_transform_fn(None))
    batch = ready[:2]
    assert batch["image"][0].shape == (128, 128, 3)
    boxes = [a["bbox"] for a in batch["annotations"][0]["annotations"]]
    assert boxes == [list(map(float, b)) for b in tiles.with_format(None)[0]["objects"]["bbox"]]
