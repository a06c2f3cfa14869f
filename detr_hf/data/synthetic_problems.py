"""A dataset with known problems injected, for testing checks and error reports against a ground truth.

:func:`inject_problems` takes a clean ``DatasetDict`` (e.g. :func:`~detr_hf.data.make_synthetic_dataset`) and
returns it with, recorded in :class:`InjectedProblems`:

- images named ``scene<k>/<split>_<row>.<ext>``, ``group_size`` consecutive images a scene (a group: a patient, a
  recording), each scene in one split, except ``spanning_groups`` scenes that also get an image of another split;
- near copies of train images in validation: cropped by up to ``crop`` of each side, resized by 0.7-1.3x and
  re-encoded as JPEG (quality 70-90), boxes moved with them; and byte-identical copies;
- zero-area boxes (width or height set to 0) and duplicate labels (a box repeated, shifted by 1% of its size);
- a fraction of one class's boxes relabelled as another class in the chosen splits (for error galleries).

The work is on Python rows, for test-sized datasets (hundreds of images).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, DatasetDict, Image
from PIL import Image as PILImage

from .schema import class_names_of, detection_features


@dataclass
class InjectedProblems:
    """What was injected; file names are the new ones, box indices positions in ``objects``."""

    group_pattern: str = r"^(scene\d+)/"  # group_by that recovers the scenes
    near_copies: list[tuple[str, str]] = field(default_factory=list)  # (validation file, train file it copies)
    exact_copies: list[tuple[str, str]] = field(default_factory=list)
    spanning_groups: list[str] = field(default_factory=list)
    zero_area: list[tuple[str, str, int]] = field(default_factory=list)  # (split, file, box)
    duplicate_boxes: list[tuple[str, str, int, int]] = field(default_factory=list)  # (split, file, box, copy of)
    swapped: list[tuple[str, str, int, int, int]] = field(default_factory=list)  # (split, file, box, true, given)


def _encode(image: PILImage.Image, fmt: str, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _near_copy(row: dict, rng: np.random.Generator, crop: float) -> dict:
    """``row``'s image cropped, resized and re-encoded as JPEG, its boxes moved along (and clipped)."""
    image = PILImage.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
    w, h = image.size
    left, top, right, bottom = (rng.uniform(0, crop, 4) * [w, h, w, h]).astype(int)
    image = image.crop((left, top, w - right, h - bottom))
    scale = rng.uniform(0.7, 1.3)
    size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    sx, sy = size[0] / image.width, size[1] / image.height
    image = image.resize(size, PILImage.Resampling.BILINEAR)
    objects = {k: list(v) for k, v in row["objects"].items()}
    boxes = []
    for x, y, bw, bh in objects["bbox"]:
        x0, y0 = max(x - left, 0) * sx, max(y - top, 0) * sy
        x1, y1 = min(x + bw - left, image.width / sx) * sx, min(y + bh - top, image.height / sy) * sy
        boxes.append([x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)])
    keep = [k for k, b in enumerate(boxes) if b[2] >= 1 and b[3] >= 1]
    objects = {k: [v[j] for j in keep] for k, v in objects.items()}
    objects["bbox"] = [boxes[j] for j in keep]
    objects["area"] = [b[2] * b[3] for b in objects["bbox"]]
    quality = int(rng.integers(70, 91))
    return {
        **row,
        "image": {"bytes": _encode(image, "JPEG", quality), "path": None},
        "width": size[0],
        "height": size[1],
        "objects": objects,
    }


def inject_problems(
    dataset: DatasetDict,
    *,
    seed: int = 0,
    group_size: int = 4,
    near_copies: int = 10,
    exact_copies: int = 3,
    crop: float = 0.04,
    spanning_groups: int = 3,
    zero_area: int = 10,
    duplicate_boxes: int = 10,
    swap_fraction: float = 0.0,
    swap_classes: tuple[int, int] = (0, 1),
    swap_splits: tuple[str, ...] = ("validation",),
) -> tuple[DatasetDict, InjectedProblems]:
    """``dataset`` (with ``train`` and ``validation``) with the problems of the module docstring injected."""
    rng = np.random.default_rng(seed)
    truth = InjectedProblems()
    names = class_names_of(dataset["train"])
    rows = {s: ds.cast_column("image", Image(decode=False)).to_list() for s, ds in dataset.items()}
    scene = 0
    for split, split_rows in rows.items():  # scenes of group_size consecutive images, named by scene
        for k, row in enumerate(split_rows):
            ext = (row["file_name"] or "x.png").rsplit(".", 1)[-1]
            row["file_name"] = f"scene{scene + k // group_size:04d}/{split}_{k:05d}.{ext}"
        scene += -(-len(split_rows) // group_size)
    train, validation = rows["train"], rows["validation"]
    train_groups = sorted({r["file_name"].split("/")[0] for r in train})
    for k, g in enumerate(rng.choice(train_groups, size=min(spanning_groups, len(train_groups)), replace=False)):
        row = validation[k]  # the first validation images join a train scene
        row["file_name"] = f"{g}/validation_joined_{k:03d}.png"
        truth.spanning_groups.append(str(g))
    clean_val = len(validation)
    sources = rng.choice(len(train), size=min(near_copies + exact_copies, len(train)), replace=False)
    for k, t in enumerate(sources):
        source = train[int(t)]
        if k < near_copies:
            copy = _near_copy(source, rng, crop)
            copy["file_name"] = f"scene{scene + k:04d}/validation_copy_{k:03d}.jpg"
            truth.near_copies.append((copy["file_name"], source["file_name"]))
        else:
            objects = {key: list(values) for key, values in source["objects"].items()}  # its own lists
            copy = {**source, "objects": objects, "file_name": f"scene{scene + k:04d}/validation_exact_{k:03d}.png"}
            truth.exact_copies.append((copy["file_name"], source["file_name"]))
        validation.append(copy)
    # labels: zero-area boxes and duplicates on distinct boxes of the clean rows (not the copies, not the joined)
    candidates = [
        (s, r, b)
        for s in rows
        for r, row in enumerate(rows[s][: clean_val if s == "validation" else None])
        for b in range(len(row["objects"]["bbox"]))
        if not (s == "validation" and r < spanning_groups)
    ]
    picks = rng.choice(len(candidates), size=min(zero_area + duplicate_boxes, len(candidates)), replace=False)
    for k, p in enumerate(picks):
        split, r, b = candidates[int(p)]
        row = rows[split][r]
        objects = row["objects"]
        if k < zero_area:
            objects["bbox"][b] = [*objects["bbox"][b][:2], 0.0, objects["bbox"][b][3]]
            objects["area"][b] = 0.0
            truth.zero_area.append((split, row["file_name"], b))
            continue
        x, y, w, h = objects["bbox"][b]
        for key in objects:
            objects[key] = [*objects[key], objects[key][b]]
        objects["bbox"][-1] = [x + 0.01 * w, y + 0.01 * h, w, h]
        objects["id"][-1] = max(objects["id"]) + 1
        truth.duplicate_boxes.append((split, row["file_name"], len(objects["bbox"]) - 1, b))
    source_class, given_class = swap_classes
    protected = {(s, f, b) for s, f, b in truth.zero_area}  # swaps keep the other injected problems intact
    protected |= {(s, f, b) for s, f, new, old in truth.duplicate_boxes for b in (new, old)}
    for split in swap_splits:
        for row in rows[split]:
            for b, category in enumerate(row["objects"]["category"]):
                if (
                    category == source_class
                    and (split, row["file_name"], b) not in protected
                    and rng.random() < swap_fraction
                ):
                    row["objects"]["category"][b] = given_class
                    truth.swapped.append((split, row["file_name"], b, source_class, given_class))
    features = detection_features(names)
    out = DatasetDict({s: Dataset.from_list(r, features=features) for s, r in rows.items()})
    return out, truth
