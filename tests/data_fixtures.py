"""Tiny annotation folders in every supported format, written by hand (not by detr_hf's exporters).

All of them describe the same labels, ``TRUTH``: three images (one a negative) with boxes given as integer pixel
corners, so each format's reader must produce exactly the same dataset.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["cat", "dog", "person"]  # sorted, so name-only formats give the same order as the listed ones
COCO_IDS = {"cat": 3, "dog": 7, "person": 11}  # sparse, 1-based
# file name -> (width, height, [(class, (x0, y0, x1, y1)) in continuous pixel corners])
TRUTH = {
    "a.jpg": (64, 48, [("dog", (4, 6, 30, 40)), ("cat", (32, 8, 60, 44))]),
    "b.png": (40, 60, [("person", (0, 0, 40, 60))]),
    "c.jpg": (50, 50, []),
}


def write_image(path: Path, width: int, height: int, seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_images(folder: Path) -> None:
    for k, (name, (w, h, _)) in enumerate(TRUTH.items()):
        write_image(folder / name, w, h, seed=k)


def expected_rows() -> list[tuple[str, int, int, list[tuple[str, list[float]]]]]:
    """(file_name, width, height, [(class, COCO xywh)]) sorted by file name: what every reader must give."""
    rows = []
    for name, (w, h, objects) in sorted(TRUTH.items()):
        rows.append((name, w, h, [(c, [x0, y0, x1 - x0, y1 - y0]) for c, (x0, y0, x1, y1) in objects]))
    return rows


def write_coco(root: Path, truth: dict = TRUTH, file_name: str = "annotations.json") -> dict:
    write_images(root)
    images, annotations = [], []
    ann_id = 100
    for k, (name, (w, h, objects)) in enumerate(truth.items()):
        images.append({"id": 1000 + k, "file_name": name, "width": w, "height": h})
        for c, (x0, y0, x1, y1) in objects:
            ann_id += 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": 1000 + k,
                    "category_id": COCO_IDS[c],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "thing"} for n, i in COCO_IDS.items()],
    }
    (root / file_name).write_text(json.dumps(coco))
    return coco


def voc_xml(name: str, w: int, h: int, objects, flags=None, one_based: bool = True) -> str:
    parts = [f"<annotation><folder>x</folder><filename>{name}</filename>"]
    parts.append(f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>")
    for k, (c, (x0, y0, x1, y1)) in enumerate(objects):
        difficult, truncated = (flags or {}).get(k, (0, 0))
        xmin, ymin = (x0 + 1, y0 + 1) if one_based else (x0, y0)
        parts.append(
            f"<object><name>{c}</name><pose>Unspecified</pose><truncated>{truncated}</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
            # a VOC person-layout part: its box must not become an object
            f"<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part>"
            "</object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


def write_voc(root: Path, truth: dict = TRUTH) -> None:
    """VOCdevkit layout: Annotations/, JPEGImages/; corners 1-based."""
    write_images(root / "JPEGImages")
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for name, (w, h, objects) in truth.items():
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(voc_xml(name, w, h, objects))


def yolo_line(c: str, box, w: int, h: int) -> str:
    x0, y0, x1, y1 = box
    return f"{CLASSES.index(c)} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"


def write_yolo(root: Path, truth: dict = TRUTH) -> None:
    """Flat layout: images and label files side by side, classes.txt; the negative has no label file."""
    write_images(root)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for name, (w, h, objects) in truth.items():
        if objects:
            lines = [yolo_line(c, box, w, h) for c, box in objects]
            (root / f"{Path(name).stem}.txt").write_text("\n".join(lines) + "\n")


def write_labelme(root: Path, truth: dict = TRUTH, embed: bool = False) -> None:
    """One JSON per image; rectangles with their corners in reverse order (LabelMe keeps drag order)."""
    images = root / "_images"
    write_images(images)
    for name, (w, h, objects) in truth.items():
        shapes = [
            {"label": c, "points": [[x1, y1], [x0, y0]], "shape_type": "rectangle", "group_id": None, "flags": {}}
            for c, (x0, y0, x1, y1) in objects
        ]
        data = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": name, "imageHeight": h, "imageWidth": w}
        data["imageData"] = base64.b64encode((images / name).read_bytes()).decode() if embed else None
        if not embed:
            (root / name).write_bytes((images / name).read_bytes())
        (root / f"{Path(name).stem}.json").write_text(json.dumps(data))
    for p in images.iterdir():
        p.unlink()
    images.rmdir()


def write_cvat(root: Path, truth: dict = TRUTH) -> None:
    write_images(root / "images")
    labels = "".join(f"<label><name>{c}</name><color>#000000</color><attributes></attributes></label>" for c in CLASSES)
    parts = [f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version><meta><task><labels>{labels}']
    parts.append("</labels></task></meta>")
    for k, (name, (w, h, objects)) in enumerate(truth.items()):
        parts.append(f'<image id="{k}" name="{name}" width="{w}" height="{h}">')
        for c, (x0, y0, x1, y1) in objects:
            parts.append(
                f'<box label="{c}" occluded="0" source="manual" xtl="{x0:.2f}" ytl="{y0:.2f}" xbr="{x1:.2f}" '
                f'ybr="{y1:.2f}" z_order="0"></box>'
            )
        parts.append("</image>")
    parts.append("</annotations>")
    (root / "annotations.xml").write_text("\n".join(parts))


def write_csv(root: Path, truth: dict = TRUTH) -> None:
    write_images(root / "images")
    lines = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    for name, (w, h, objects) in truth.items():
        if not objects:
            lines.append(f"images/{name},{w},{h},,,,,")
        for c, (x0, y0, x1, y1) in objects:
            lines.append(f"images/{name},{w},{h},{c},{x0},{y0},{x1},{y1}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def write_openimages(root: Path, truth: dict = TRUTH) -> None:
    """Open Images columns, fractions with a decimal comma (quoted), as the rodm export has them."""
    write_images(root)
    lines = [
        "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
    ]
    for name, (w, h, objects) in truth.items():
        for c, (x0, y0, x1, y1) in objects:
            fractions = [f'"{repr(v).replace(".", ",")}"' for v in (x0 / w, x1 / w, y0 / h, y1 / h)]
            lines.append(f"{name},,{c},,{','.join(fractions)},0,0,0,0,0")
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    # the negative image has no row: Open Images lists only boxes, so it is not part of this dataset


WRITERS = {
    "coco": write_coco,
    "voc": write_voc,
    "yolo": write_yolo,
    "labelme": write_labelme,
    "cvat": write_cvat,
    "csv": write_csv,
    "openimages": write_openimages,
}
