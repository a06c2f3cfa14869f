"""Statistics of a detection dataset, and a one-page plot of them: what to look at before training.

Counts per split (images, negatives, boxes), boxes per class, the box-size distribution with COCO's small / medium /
large ranges (area below 32², below 96², above), and boxes per image. Only the annotation columns are read (through
Arrow), so inspecting a large dataset costs no image decoding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from .schema import class_names_of

SMALL_AREA, LARGE_AREA = 32**2, 96**2  # COCO's thresholds on annotation area


@dataclass
class SplitStats:
    images: int
    negatives: int
    boxes: int
    boxes_per_class: dict[str, int]
    small: int
    medium: int
    large: int
    crowd: int
    difficult: int
    box_sides: np.ndarray = field(repr=False)  # sqrt(area) of every box, pixels
    boxes_per_image: np.ndarray = field(repr=False)
    image_sizes: np.ndarray = field(repr=False)  # (n, 2) width, height

    def to_dict(self) -> dict:
        sides = self.box_sides
        widths, heights = (self.image_sizes[:, 0], self.image_sizes[:, 1]) if len(self.image_sizes) else ([], [])
        return {
            "images": self.images,
            "negatives": self.negatives,
            "boxes": self.boxes,
            "boxes_per_class": self.boxes_per_class,
            "small": self.small,
            "medium": self.medium,
            "large": self.large,
            "crowd": self.crowd,
            "difficult": self.difficult,
            "box_side_percentiles": {p: float(np.percentile(sides, p)) for p in (5, 50, 95)} if len(sides) else {},
            "max_boxes_per_image": int(self.boxes_per_image.max()) if len(self.boxes_per_image) else 0,
            "image_width_range": [int(np.min(widths)), int(np.max(widths))] if len(widths) else [],
            "image_height_range": [int(np.min(heights)), int(np.max(heights))] if len(heights) else [],
        }


@dataclass
class DatasetStats:
    class_names: list[str]
    splits: dict[str, SplitStats]

    def to_dict(self) -> dict:
        return {"class_names": self.class_names, "splits": {k: v.to_dict() for k, v in self.splits.items()}}

    def __str__(self) -> str:
        head = f"  {'split':<12}{'images':>8}{'negatives':>10}{'boxes':>8}{'small':>8}{'medium':>8}{'large':>8}"
        lines = [f"{len(self.class_names)} classes", head]
        for name, s in self.splits.items():
            lines.append(f"  {name:<12}{s.images:>8}{s.negatives:>10}{s.boxes:>8}{s.small:>8}{s.medium:>8}{s.large:>8}")
        width = max((len(n) for n in self.class_names), default=5)
        lines.append("  boxes per class: " + "".join(f"{s:>12}" for s in self.splits))
        for name in self.class_names:
            lines.append(
                f"    {name:<{width}}" + "".join(f"{s.boxes_per_class[name]:>12}" for s in self.splits.values())
            )
        for name, s in self.splits.items():
            d = s.to_dict()
            if d["box_side_percentiles"]:
                p = d["box_side_percentiles"]
                lines.append(
                    f"  {name}: box side sqrt(area) p5/p50/p95 = {p[5]:.1f}/{p[50]:.1f}/{p[95]:.1f} px, "
                    f"up to {d['max_boxes_per_image']} boxes per image, crowd {s.crowd}, difficult {s.difficult}"
                )
        return "\n".join(lines)


def _split_stats(dataset: Dataset) -> SplitStats:
    names = class_names_of(dataset)
    table = dataset.select_columns(["width", "height", "objects"]).with_format("arrow")[:]
    objects = table.column("objects").combine_chunks()

    def flat(key: str, dtype) -> np.ndarray:
        column = objects.field(key)
        if column.null_count == len(column) and len(column):  # a field another producer left empty
            return np.zeros(int(pc.sum(pc.list_value_length(objects.field("bbox"))).as_py() or 0), dtype)
        return pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(dtype)

    per_image = pc.list_value_length(objects.field("category")).to_numpy(zero_copy_only=False).astype(np.int64)
    labels = flat("category", np.int64)
    areas = flat("area", np.float64)
    counts = np.bincount(labels, minlength=len(names))
    return SplitStats(
        images=len(dataset),
        negatives=int((per_image == 0).sum()),
        boxes=int(per_image.sum()),
        boxes_per_class={n: int(c) for n, c in zip(names, counts)},
        small=int((areas < SMALL_AREA).sum()),
        medium=int(((areas >= SMALL_AREA) & (areas < LARGE_AREA)).sum()),
        large=int((areas >= LARGE_AREA).sum()),
        crowd=int(flat("iscrowd", np.int64).sum()) if "iscrowd" in objects.type.names else 0,
        difficult=int(flat("difficult", np.int64).sum()) if "difficult" in objects.type.names else 0,
        box_sides=np.sqrt(np.clip(areas, 0, None)),
        boxes_per_image=per_image,
        image_sizes=np.stack(
            [
                table.column("width").to_numpy(zero_copy_only=False),
                table.column("height").to_numpy(zero_copy_only=False),
            ],
            axis=1,
        ),
    )


def inspect_dataset(dataset: DatasetDict | Dataset | str | os.PathLike) -> DatasetStats:
    """Statistics of a dataset in the detection schema (a ``DatasetDict``, a ``Dataset`` or a saved folder)."""
    if isinstance(dataset, (str, os.PathLike)):
        from .loading import load_detection_dataset  # avoids an import cycle

        dataset = load_detection_dataset(dataset, val_fraction=0, verbose=False)
    if isinstance(dataset, Dataset):
        dataset = DatasetDict({"train": dataset})
    names = class_names_of(next(iter(dataset.values())))
    return DatasetStats(class_names=names, splits={k: _split_stats(v) for k, v in dataset.items()})


def plot_dataset_stats(stats: DatasetStats, path: str | os.PathLike, title: str | None = None) -> Path:
    """Save a one-page PNG: boxes per class, box sizes (COCO ranges marked), size ranges and boxes per image."""
    import matplotlib  # plotting is optional work

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(stats.splits)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    n_classes = len(stats.class_names)
    fig = plt.figure(figsize=(13, 8 + max(0, n_classes - 20) * 0.18), constrained_layout=True)
    grid = fig.add_gridspec(3, 2, width_ratios=[1, 1.2])
    ax_cls = fig.add_subplot(grid[:, 0])
    ax_size, ax_range, ax_per = (fig.add_subplot(grid[k, 1]) for k in range(3))

    # boxes per class: one bar group per class, one bar per split
    y = np.arange(n_classes)
    height = 0.8 / max(len(splits), 1)
    for k, split in enumerate(splits):
        counts = [stats.splits[split].boxes_per_class[n] for n in stats.class_names]
        ax_cls.barh(
            y + k * height - 0.4 + height / 2, counts, height=height, label=split, color=colors[k % len(colors)]
        )
    ax_cls.set_yticks(y, stats.class_names, fontsize=9 if n_classes <= 40 else 6)
    ax_cls.set_ylim(n_classes - 0.5, -0.5)  # first class on top, no empty margin
    ax_cls.set_xlabel("boxes")
    ax_cls.set_title("Boxes per class")
    ax_cls.legend(loc="lower right")

    # box sizes: sqrt(area) on a log axis, COCO ranges shaded
    sides = np.concatenate([s.box_sides for s in stats.splits.values()]) if splits else np.zeros(0)
    positive = sides[sides > 0]
    top = max(float(positive.max()) if len(positive) else 100.0, 100.0)
    bins = np.geomspace(max(float(positive.min()) if len(positive) else 1.0, 0.5), top * 1.05, 40)
    for k, split in enumerate(splits):
        data = stats.splits[split].box_sides
        ax_size.hist(
            data[data > 0], bins=bins, histtype="step", linewidth=1.8, label=split, color=colors[k % len(colors)]
        )
    ax_size.set_xscale("log")
    for edge in (32, 96):
        ax_size.axvline(edge, color="0.4", linestyle="--", linewidth=1)
    ax_size.axvspan(bins[0], 32, color="0.92", zorder=0)
    ax_size.axvspan(96, bins[-1], color="0.96", zorder=0)
    ax_size.set_xlim(bins[0], bins[-1])
    ticks = [t for t in (1, 2, 4, 8, 16, 32, 64, 96, 128, 256, 512, 1024, 2048, 4096) if bins[0] <= t <= bins[-1]]
    ax_size.set_xticks(ticks, [str(t) for t in ticks])
    ax_size.minorticks_off()
    for x_text, label in (
        (np.sqrt(bins[0] * 32), "small"),
        (np.sqrt(32 * 96), "medium"),
        (np.sqrt(96 * bins[-1]), "large"),
    ):
        if bins[0] < x_text < bins[-1]:
            ax_size.text(
                x_text, 1.0, label, transform=ax_size.get_xaxis_transform(), ha="center", va="bottom", fontsize=8
            )
    ax_size.set_xlabel("box side, sqrt(area) in pixels (dashed: COCO small < 32 <= medium < 96 <= large)")
    ax_size.set_ylabel("boxes")
    ax_size.set_title("Box sizes", pad=14)
    ax_size.legend()

    # small / medium / large per split
    x = np.arange(3)
    width = 0.8 / max(len(splits), 1)
    for k, split in enumerate(splits):
        s = stats.splits[split]
        total = max(s.boxes, 1)
        values = [s.small, s.medium, s.large]
        bars = ax_range.bar(
            x + k * width - 0.4 + width / 2, values, width=width, label=split, color=colors[k % len(colors)]
        )
        ax_range.bar_label(bars, labels=[f"{100 * v / total:.0f}%" for v in values], fontsize=8)
    ax_range.set_xticks(x, ["small (<32²)", "medium", "large (>=96²)"])
    ax_range.set_ylabel("boxes")
    ax_range.set_title("COCO size ranges (share of the split's boxes)")
    ax_range.margins(y=0.15)

    # boxes per image, negatives included as 0
    most = max((int(s.boxes_per_image.max()) for s in stats.splits.values() if len(s.boxes_per_image)), default=1)
    edges = np.arange(-0.5, most + 1.5) if most <= 40 else np.linspace(-0.5, most + 0.5, 41)
    for k, split in enumerate(splits):
        ax_per.hist(
            stats.splits[split].boxes_per_image, bins=edges, histtype="step", linewidth=1.8, label=split,
            color=colors[k % len(colors)],
        )  # fmt: skip
    ax_per.xaxis.get_major_locator().set_params(integer=True)
    ax_per.set_xlabel("boxes per image (0 = negative images)")
    ax_per.set_ylabel("images")
    ax_per.set_title("Boxes per image")

    totals = ", ".join(f"{k}: {s.images} images, {s.boxes} boxes" for k, s in stats.splits.items())
    fig.suptitle(f"{title + ' - ' if title else ''}{n_classes} classes; {totals}", fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
