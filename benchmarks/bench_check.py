"""Throughput (images/s) and memory of `check_dataset` (detr-hf check) on generated datasets of growing size.

    python benchmarks/bench_check.py              # 5,000, 10,000 and 20,000 images (a few minutes on a quiet CPU)
    python benchmarks/bench_check.py --quick      # 500, 1,000 and 2,000 images (under a minute)
    python benchmarks/bench_check.py --num-proc 4 # images read by 4 worker processes

The images are 64x64 PNGs (smooth colour gradients with 1-4 rectangles, labelled), 90% in train and 10% in
validation, with 2% of the validation images replaced by resized and re-encoded copies of train images so the
near-duplicate search has something to find. Each dataset is generated once into a temporary folder (save_to_disk)
and each size is checked in a fresh process, which loads it memory-mapped and runs the full check (exact and near
duplicates, labels). Reported: images/s end to end; the near-duplicate search alone (all pairs); and memory: the
Python heap's peak during the check (tracemalloc, numpy included) and the process's peak RSS over its RSS before the
check. Memory is flat when the heap peak grows by little more than the fingerprints (224 bytes an image) from 5,000
to 20,000 images. RSS also counts the Arrow file's pages the check touched (the images it read, ~4 kB each): they
are the file cache, which the OS drops when it needs the memory, not memory the check holds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from machine import machine_line  # benchmarks/machine.py: scripts run from benchmarks/
from PIL import Image

SIDE = 64


def _image(rng: np.random.Generator) -> tuple[np.ndarray, list, list]:
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    base = rng.integers(0, 200, 3)
    pixels = (base + (xx[..., None] * rng.random(3) + yy[..., None] * rng.random(3)) * 0.8).clip(0, 255)
    pixels = pixels.astype(np.uint8)
    boxes, labels = [], []
    for _ in range(rng.integers(1, 5)):
        w, h = rng.integers(6, 30, 2)
        x, y = rng.integers(0, SIDE - w), rng.integers(0, SIDE - h)
        pixels[y : y + h, x : x + w] = rng.integers(0, 255, 3)
        boxes.append([float(x), float(y), float(w), float(h)])
        labels.append(int(rng.integers(0, 3)))
    return pixels, boxes, labels


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _rows(n: int, split: str, seed: int):
    rng = np.random.default_rng([seed, split == "validation"])
    train_rng = np.random.default_rng([seed, 0])  # replays train images for the copies
    for k in range(n):
        pixels, boxes, labels = _image(rng)
        image = Image.fromarray(pixels)
        data = _encode(image)
        if split == "validation" and k % 50 == 0:  # 2%: a copy of a train image, resized and re-encoded
            pixels, boxes, labels = _image(train_rng)
            image = Image.fromarray(pixels).resize((80, 80), Image.Resampling.BILINEAR)
            data = _encode(image, "JPEG")
            boxes = [[v * 80 / SIDE for v in b] for b in boxes]
        m = len(boxes)
        yield {
            "image_id": k,
            "image": {"bytes": data, "path": None},
            "width": image.width,
            "height": image.height,
            "file_name": f"{split}/{k:06d}.png",
            "objects": {
                "id": list(range(m)),
                "area": [b[2] * b[3] for b in boxes],
                "bbox": boxes,
                "category": labels,
                "iscrowd": [0] * m,
                "difficult": [0] * m,
                "truncated": [0] * m,
            },
        }


def generate(folder: Path, n: int) -> None:
    from datasets import Dataset, DatasetDict

    from detr_hf.data import detection_features

    features = detection_features(["a", "b", "c"])
    n_val = n // 10
    splits = {}
    for split, count in (("train", n - n_val), ("validation", n_val)):
        splits[split] = Dataset.from_generator(
            _rows,
            gen_kwargs={"n": count, "split": split, "seed": 0},
            features=features,
            cache_dir=str(folder / "cache"),
            split=split,
        )
    DatasetDict(splits).save_to_disk(str(folder / "dataset"))


def measure(folder: Path, num_proc: int) -> dict:
    """In this (fresh) process: load the dataset, check it, and report time and memory."""
    from datasets import load_from_disk

    from detr_hf.health import check_dataset
    from detr_hf.health.duplicates import find_duplicates
    from detr_hf.health.fingerprints import Fingerprints

    dataset = load_from_disk(str(folder / "dataset"))
    n = sum(len(ds) for ds in dataset.values())
    rss_before = _rss_now_mb()
    tracemalloc.start()
    started = time.perf_counter()
    report = check_dataset(dataset, num_proc=num_proc)
    seconds = time.perf_counter() - started
    heap_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fp = Fingerprints.empty(n)  # the search alone, on random hashes (no pair found: every pair is compared)
    rng = np.random.default_rng(0)
    fp.readable[:] = True
    fp.digest[:] = rng.integers(0, 2**63, (n, 2), dtype=np.uint64)
    fp.phash[:], fp.dhash[:] = rng.integers(0, 2**63, (2, n), dtype=np.uint64)
    started = time.perf_counter()
    find_duplicates(fp, np.zeros(n, bool))
    search = time.perf_counter() - started
    return {
        "images": n,
        "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 1),
        "search_s": round(search, 2),
        "heap_peak_mb": round(heap_peak, 1),
        "rss_growth_mb": round(rss_peak - rss_before, 1),
        "leaked_found": report.leaked_images,
        "leaked_injected": len(range(0, n // 10, 50)),
    }


def _rss_now_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--quick", action="store_true", help="500, 1,000 and 2,000 images")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes reading the images (default 1)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.num_proc)))
        return
    sizes = [500, 1000, 2000] if args.quick else args.sizes
    print(machine_line(), f"| num_proc {args.num_proc}")
    print(
        f"{'images':>8}{'s':>9}{'images/s':>10}{'search s':>10}{'heap peak MB':>14}{'RSS growth MB':>15}"
        f"{'leaked found/injected':>23}"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_check_") as tmp:
        for n in sizes:
            folder = Path(tmp) / str(n)
            generate(folder, n)
            env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(folder), "--num-proc", str(args.num_proc)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(
                f"{r['images']:>8}{r['seconds']:>9}{r['images_per_s']:>10}{r['search_s']:>10}{r['heap_peak_mb']:>14}"
                f"{r['rss_growth_mb']:>15}{r['leaked_found']:>12}/{r['leaked_injected']}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_line(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
