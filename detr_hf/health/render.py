"""The health report as files a person reads: Markdown and HTML pages with tables, two plots (images and boxes per
class; box sizes at the training scale against the stride) and thumbnails of duplicate groups, beside the JSON."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from PIL import Image, ImageDraw

from ..visualization import _font
from .fingerprints import decode_for_display
from .labels import SIDE_BINS
from .report import REPORT_JSON, HealthReport

MAX_THUMBNAIL_GROUPS = 12
MAX_PER_GROUP = 6


def save_report(report: HealthReport, dataset: DatasetDict | Dataset | None, output_dir: str | os.PathLike) -> dict:
    """Write ``health_report.{json,md,html}``, the plots and (with ``dataset``) duplicate thumbnails to
    ``output_dir``; returns the paths written by kind."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"plots": plot_labels(report, out)}
    if dataset is not None and report.duplicates["groups"]:
        splits = {"train": dataset} if isinstance(dataset, Dataset) else dataset
        paths["thumbnails"] = duplicate_thumbnails(report, splits, out)
        report.duplicates["thumbnails"] = [p.name for p in paths["thumbnails"]]
    paths["json"] = report.save_json(out / REPORT_JSON)
    sections = report.sections()
    title = f"Dataset health: {report.source or 'dataset'}"
    paths["markdown"] = out / "health_report.md"
    paths["markdown"].write_text(to_markdown(title, sections), encoding="utf-8")
    paths["html"] = out / "health_report.html"
    paths["html"].write_text(to_html(title, sections), encoding="utf-8")
    return paths


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: list[dict]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section['title']}", ""]
        for paragraph in section["text"]:
            lines += [paragraph, ""]
        for header, rows in section["tables"]:
            if not rows:
                continue
            lines.append("| " + " | ".join(map(_cell, header)) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
            lines.append("")
        for file, caption in section["images"]:
            lines += [f"![{caption}]({file})", ""]
    return "\n".join(lines)


def to_html(title: str, sections: list[dict]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
        "th{background:#eee}img{max-width:100%;display:block;margin:6px 0}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{esc(section['title'])}</h2>")
        parts += [f"<p>{esc(p)}</p>" for p in section["text"]]
        for header, rows in section["tables"]:
            if not rows:
                continue
            parts.append("<table><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        for file, caption in section["images"]:
            parts.append(
                f"<figure><img src='{esc(file)}' alt='{esc(caption)}'><figcaption>{esc(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def plot_labels(report: HealthReport, out: Path) -> list[Path]:
    """``class_histogram.png`` (images and boxes per class and split) and ``box_sizes.png`` (longest box side at
    the training scale, the stride marked)."""
    import matplotlib  # plotting is optional work

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, names = report.labels, report.class_names
    splits = list(labels.boxes_per_class)
    fig, axes = plt.subplots(1, 2, figsize=(12, 2 + 0.3 * max(len(names), 3)), constrained_layout=True)
    y = np.arange(len(names))
    height = 0.8 / max(len(splits), 1)
    for ax, what, table in ((axes[0], "images", labels.images_per_class), (axes[1], "boxes", labels.boxes_per_class)):
        for k, split in enumerate(splits):
            ax.barh(y + k * height - 0.4 + height / 2, [table[split][n] for n in names], height=height, label=split)
        ax.set_yticks(y, names, fontsize=9 if len(names) <= 40 else 6)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlabel(what)
        ax.set_title(f"{what.capitalize()} per class")
    axes[1].legend(loc="lower right")
    paths = [out / "class_histogram.png"]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.6), constrained_layout=True)
    for split, counts in labels.side_histogram.items():
        ax.stairs(counts, SIDE_BINS, label=split, linewidth=1.6)
    ax.set_xscale("log")
    stride = report.settings["stride"]
    used = np.flatnonzero(np.sum([c for c in labels.side_histogram.values()], axis=0)) if labels.boxes else []
    if len(used):  # the bins that hold boxes, and the stride
        ax.set_xlim(min(SIDE_BINS[used[0]], stride) / 1.5, max(SIDE_BINS[used[-1] + 1], stride) * 1.5)
    ax.axvline(stride, color="crimson", linestyle="--", label=f"stride {stride}")
    ax.set_xlabel(f"longest box side at the training scale (shortest edge {report.settings['shortest_edge']}), px")
    ax.set_ylabel("boxes")
    ax.set_title("Box sizes")
    ax.legend()
    paths.append(out / "box_sizes.png")
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def duplicate_thumbnails(report: HealthReport, splits: DatasetDict | dict, out: Path, side: int = 140) -> list[Path]:
    """One PNG per listed duplicate group (the first few): its images side by side, captioned with their split and
    file name."""
    font = _font(11)
    paths = []
    for k, group in enumerate(report.duplicates["groups"][:MAX_THUMBNAIL_GROUPS]):
        members = group["members"][:MAX_PER_GROUP]
        canvas = Image.new("RGB", (len(members) * (side + 6) + 6, side + 36), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for j, m in enumerate(members):
            value = splits[m["split"]].select_columns(["image"]).with_format("arrow")[m["row"]].column("image")
            tile = decode_for_display(value.to_pylist()[0], side)
            x = 6 + j * (side + 6)
            canvas.paste(tile, (x, 4))
            draw.text((x, side + 8), m["split"], fill=(0, 0, 0), font=font)
            draw.text((x, side + 21), Path(m["file_name"]).name[:24], fill=(80, 80, 80), font=font)
        path = out / f"duplicates_{k + 1:02d}.png"
        canvas.save(path)
        paths.append(path)
    return paths
