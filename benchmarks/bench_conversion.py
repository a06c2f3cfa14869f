"""Conversion throughput (images/s) and peak memory of `load_detection_dataset` on generated COCO and YOLO folders.

    python benchmarks/bench_conversion.py                  # 1,000 and 20,000 images, num_proc 1 and 2
    python benchmarks/bench_conversion.py --sizes 2000     # quicker

Each conversion runs in a fresh process so its peak RSS (``ru_maxrss``) is its own; with ``num_proc`` > 1 the largest
worker's peak is reported too. The reference, measured in the same run on the same files, is the bare PIL work the
conversion must do per image (open, read the EXIF orientation, decode the JPEG at 1/8 scale): the ratio shows what
the parsing, checking and Arrow writing add on top. Memory is flat when the peak at 20,000 images is close to the peak
at 1,000.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine_line  # benchmarks/machine.py: scripts run from benchmarks/
from PIL import Image

CLASSES = ["circle", "square", "triangle", "star"]


def generate(root: Path, n: int, seed: int = 0) -> None:
    """``n`` 320x240 JPEGs (smooth backgrounds with 0-5 rectangles, about 10 kB each) in COCO and YOLO layouts."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    yy, xx = np.mgrid[0:240, 0:320]
    images, annotations, ann_id = [], [], 0
    yolo_dir = root / "yolo"
    yolo_dir.mkdir()
    (yolo_dir / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for k in range(n):
        base = rng.integers(0, 200, 3)
        pixels = (base + (xx[..., None] * rng.random(3) + yy[..., None] * rng.random(3)) * 0.2).astype(np.uint8)
        lines = []
        for _ in range(rng.integers(0, 6)):
            w, h = rng.integers(8, 120, 2)
            x, y = rng.integers(0, 320 - w), rng.integers(0, 240 - h)
            pixels[y : y + h, x : x + w] = rng.integers(0, 255, 3)
            label = int(rng.integers(0, len(CLASSES)))
            ann_id += 1
            annotations.append(
                {"id": ann_id, "image_id": k + 1, "category_id": label + 1, "bbox": [int(x), int(y), int(w), int(h)],
                 "area": int(w * h), "iscrowd": 0}
            )  # fmt: skip
            lines.append(f"{label} {(x + w / 2) / 320:.6f} {(y + h / 2) / 240:.6f} {w / 320:.6f} {h / 240:.6f}")
        name = f"{k:06d}.jpg"
        Image.fromarray(pixels).save(images_dir / name, quality=85)
        (yolo_dir / f"{k:06d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        images.append({"id": k + 1, "file_name": name, "width": 320, "height": 240})
    coco_dir = root / "coco"
    coco_dir.mkdir()
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
    (coco_dir / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


def reference_pass(images_dir: Path) -> float:
    """Seconds for the bare per-image PIL work: open, EXIF orientation, 1/8-scale decode."""
    start = time.perf_counter()
    for path in sorted(images_dir.iterdir()):
        with Image.open(path) as image:
            image.getexif().get(0x0112)
            image.draft(image.mode, (1, 1))
            image.load()
    return time.perf_counter() - start


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def parallel_speedup(processes: int = 2) -> float:
    """How much faster ``processes`` processes finish a pure-Python loop than one: what ``num_proc`` can gain here."""
    from multiprocessing import Pool

    work = [3_000_000] * processes
    start = time.perf_counter()
    for n in work:
        _spin(n)
    serial = time.perf_counter() - start
    with Pool(processes) as pool:
        pool.map(_spin, [10] * processes)  # start the workers before timing
        start = time.perf_counter()
        pool.map(_spin, work)
        parallel = time.perf_counter() - start
    return serial / parallel


def worker(args: argparse.Namespace) -> None:
    """Runs in a fresh process: one conversion, its time and peak memory as JSON on stdout."""
    from detr_hf.data import load_detection_dataset

    start = time.perf_counter()
    _, report = load_detection_dataset(
        args.source, images_dir=args.images_dir, val_fraction=0, num_proc=args.num_proc, cache_dir=args.cache_dir,
        verbose=False, return_report=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "images": report.num_images,
                "boxes": report.num_boxes,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def run_one(source: Path, images_dir: Path, num_proc: int, cache_dir: Path) -> dict:
    shutil.rmtree(cache_dir, ignore_errors=True)
    command = [sys.executable, __file__, "--worker", "--source", str(source), "--images-dir", str(images_dir)]
    command += ["--num-proc", str(num_proc), "--cache-dir", str(cache_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--formats", nargs="+", default=["coco", "yolo"])
    parser.add_argument("--workdir", help="where to generate the images (default: a temporary folder)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.num_proc = args.num_proc[0] if isinstance(args.num_proc, list) else args.num_proc
        worker(args)
        return
    base = Path(args.workdir or tempfile.mkdtemp(prefix="bench_conversion_"))
    print(machine_line())
    print(f"cpu cores: {os.cpu_count()}; 2-process speedup of a pure-Python loop here: {parallel_speedup():.2f}x")
    print(f"data under {base}")
    print(
        f"{'format':<7}{'images':>8}{'num_proc':>9}{'seconds':>9}{'images/s':>10}{'vs PIL':>8}{'peak MB':>9}{'worker MB':>10}"
    )
    try:
        for n in args.sizes:
            root = base / f"n{n}"
            if not (root / "coco" / "annotations.json").exists():
                t = time.perf_counter()
                shutil.rmtree(root, ignore_errors=True)
                generate(root, n)
                print(f"(generated {n} images in {time.perf_counter() - t:.0f} s)")
            reference = reference_pass(root / "images")
            print(
                f"{'PIL':<7}{n:>8}{1:>9}{reference:>9.1f}{n / reference:>10.0f}{1.0:>8.2f}   (reference: open+EXIF+decode)"
            )
            for fmt in args.formats:
                for num_proc in args.num_proc:
                    r = run_one(root / fmt, root / "images", num_proc, base / "cache")
                    assert r["images"] == n, r
                    print(
                        f"{fmt:<7}{n:>8}{num_proc:>9}{r['seconds']:>9.1f}{n / r['seconds']:>10.0f}"
                        f"{r['seconds'] / reference:>8.2f}{r['peak_rss_mb']:>9.0f}{r['worker_peak_rss_mb']:>10.0f}"
                    )
    finally:
        shutil.rmtree(base / "cache", ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
