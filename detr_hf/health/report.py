"""The health report: what ``check_dataset`` found, as a verdict (errors, warnings), JSON, a terminal table, and the
sections (paragraphs and tables) the Markdown and HTML pages render."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .labels import BROKEN, DESCRIPTIONS, WARNINGS, LabelHealth

REPORT_JSON = "health_report.json"
IMBALANCE_WARNING = 10.0  # boxes of the most common class over the rarest one's


@dataclass
class Problem:
    severity: str  # "error" (``--strict`` fails) or "warning"
    code: str
    message: str


@dataclass
class HealthReport:
    """Everything ``check_dataset`` found. ``ok`` is False when there is leakage or a broken label."""

    source: str
    class_names: list[str]
    splits: dict[str, int]  # split -> images
    settings: dict[str, Any]
    duplicates: dict[str, Any]  # counts, groups (members: split, row, file_name), near pairs
    leakage: dict[str, dict[str, Any]]  # non-train split -> counts and examples of images with a twin in train
    groups: dict[str, Any] | None  # group_by: groups spanning splits
    labels: LabelHealth
    conversion: dict[str, int] = field(default_factory=dict)  # fixes the conversion made, by kind
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def leaked_images(self) -> int:
        return sum(v["with_twin_in_train"] for v in self.leakage.values())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["labels"]["imbalance"] = self.labels.imbalance()
        return out

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")
        return path

    def describe(self, kind: str) -> str:
        s = self.settings
        return DESCRIPTIONS[kind].format(
            iou=s.get("duplicate_iou"), stride=s.get("stride"), aspect=s.get("max_aspect"), queries=s.get("num_queries")
        )

    def __str__(self) -> str:
        """The short table printed in the terminal."""
        lines = [f"Dataset health: {self.source}", f"  {'split':<12}{'images':>8}{'twin in train':>16}"]
        for split, n in self.splits.items():
            leak = self.leakage.get(split)
            shown = "-" if leak is None else f"{leak['with_twin_in_train']} ({leak['exact']} exact)"
            lines.append(f"  {split:<12}{n:>8}{shown:>16}")
        d = self.duplicates
        near = f", {d['near_groups']} near-duplicate groups" if d.get("searched_near") else " (near: not searched)"
        if d["searched"]:
            lines.append(f"  duplicates: {d['exact_groups']} exact groups ({d['exact_images']} extra copies){near}")
        else:
            lines.append("  duplicates: not searched")
        if self.groups is not None:
            lines.append(
                f"  groups ({self.groups['group_by']}): {self.groups['groups']}, "
                f"{len(self.groups['spanning'])} spanning two or more splits"
            )
        labels = self.labels
        found = [f"{k} {labels.counts[k]}" for k in (*BROKEN, *WARNINGS) if labels.counts[k]]
        lines.append(f"  labels: {labels.boxes} boxes; " + (", ".join(found) if found else "no problem found"))
        ratio = labels.imbalance()
        if ratio is not None:
            lines.append(f"  class imbalance (boxes, most / least common): {ratio:.1f}")
        if self.conversion:
            lines.append("  fixed at conversion: " + ", ".join(f"{k} {n}" for k, n in self.conversion.items()))
        for p in self.problems:
            lines.append(f"  {p.severity.upper()}: {p.message}")
        lines.append(f"  result: {'OK' if self.ok else 'FAIL'} ({self.seconds:.1f} s)")
        return "\n".join(lines)

    # -- sections of the Markdown / HTML pages --------------------------------------------------------------------
    def sections(self) -> list[dict[str, Any]]:
        """``[{"title", "text": [paragraphs], "tables": [(header, rows)], "images": [(file, caption)]}]``."""
        verdict = "passes" if self.ok else "fails"
        summary = {
            "title": "Summary",
            "text": [
                f"The dataset {verdict} the check ({len(self.errors)} errors, "
                f"{len(self.problems) - len(self.errors)} warnings)."
            ],
            "tables": [(["severity", "problem"], [[p.severity, p.message] for p in self.problems])],
            "images": [],
        }
        splits_rows = []
        for split, n in self.splits.items():
            leak = self.leakage.get(split)
            splits_rows.append(
                [
                    split,
                    n,
                    "-" if leak is None else leak["with_twin_in_train"],
                    "-" if leak is None else leak["exact"],
                    "-" if leak is None else leak["near"],
                ]
            )
        leakage_rows = [
            [split, e["file_name"], e["twin_file_name"], e["kind"]]
            for split, leak in self.leakage.items()
            for e in leak["examples"]
        ]
        d = self.duplicates
        group_rows = [
            [
                k + 1,
                g["kind"],
                ", ".join(sorted({m["split"] for m in g["members"]})),
                len(g["members"]),
                "; ".join(m["file_name"] for m in g["members"][:6]) + (" ..." if len(g["members"]) > 6 else ""),
            ]
            for k, g in enumerate(d["groups"])
        ]
        duplicates = {
            "title": "Duplicates and leakage",
            "text": [
                "Images not read: duplicates not searched."
                if not d["searched"]
                else f"{d['exact_groups']} groups of byte-identical files ({d['exact_images']} extra copies); "
                + (
                    f"{d['near_groups']} groups joined by near duplicates ({d['near_pairs']} pairs: perceptual hashes "
                    f"within {self.settings['near_threshold']} of 128 bits and thumbnails within "
                    f"{self.settings['thumb_tolerance']} of 255)."
                    if d.get("searched_near")
                    else "near duplicates not searched."
                )
            ],
            "tables": [
                (["split", "images", "twin in train", "exact", "near"], splits_rows),
                (["split", "image", "its twin in train", "kind"], leakage_rows),
                (["group", "kind", "splits", "images", "file names"], group_rows),
            ],
            "images": [(f, f"duplicate group {k + 1}") for k, f in enumerate(d.get("thumbnails", []))],
        }
        out = [summary, duplicates]
        if self.groups is not None:
            rows = [
                [g["group"], ", ".join(f"{s}: {n}" for s, n in g["splits"].items())] for g in self.groups["spanning"]
            ]
            out.append(
                {
                    "title": f"Groups ({self.groups['group_by']})",
                    "text": [
                        f"{self.groups['groups']} groups; {len(self.groups['spanning'])} span two or more splits; "
                        f"{self.groups['unmatched']} file names match no group."
                    ],
                    "tables": [(["group", "images per split"], rows)],
                    "images": [],
                }
            )
        out.append(self._label_section())
        return out

    def _label_section(self) -> dict[str, Any]:
        labels, s = self.labels, self.settings
        problem_rows = [
            [k, "error" if k in BROKEN else "warning", labels.counts[k], self.describe(k)] for k in (*BROKEN, *WARNINGS)
        ]
        problem_rows += [
            [k, "error (fixed at conversion)", n, "see conversion_report.json"] for k, n in self.conversion.items()
        ]
        example_rows = [
            [k, e["split"], e["file_name"], e.get("box", ""), e.get("category", ""), e.get("bbox", "")]
            for k in (*BROKEN, *WARNINGS)
            for e in labels.examples[k][:10]
        ]
        splits = list(labels.boxes_per_class)
        class_rows = [
            [name] + [f"{labels.images_per_class[sp][name]} / {labels.boxes_per_class[sp][name]}" for sp in splits]
            for name in self.class_names
        ]
        per_image = [
            [sp, v["max"], f"{v['p99']:.0f}", f"{v['mean']:.2f}"] for sp, v in labels.objects_per_image.items()
        ]
        text = [
            f"{labels.boxes} boxes ({labels.crowd} crowd regions). Training resize: shortest edge "
            f"{s['shortest_edge']}, longest edge {s['longest_edge']}; stride {s['stride']}; {s['num_queries']} "
            "queries."
        ]
        if labels.learnable_at:
            at = labels.learnable_at
            text.append(
                f"{labels.counts['below_stride']} boxes are smaller than the stride at the training scale: "
                f"90% of them reach it at shortest_edge {at['shortest_edge']}"
                + (f", longest_edge {at['longest_edge']}" if at["longest_edge"] else "")
                + "."
            )
        ratio = labels.imbalance()
        if ratio is not None:
            text.append(f"Class imbalance (boxes of the most common class over the rarest present): {ratio:.1f}.")
        return {
            "title": "Labels",
            "text": text,
            "tables": [
                (["check", "severity", "count", "what"], problem_rows),
                (["class", *(f"{sp}: images / boxes" for sp in splits)], class_rows),
                (["split", "most objects in an image", "p99", "mean"], per_image),
                (["check", "split", "image", "box", "class", "bbox (x, y, w, h)"], example_rows),
            ],
            "images": [("class_histogram.png", "images and boxes per class"), ("box_sizes.png", "box sizes")],
        }
