"""Dataset health: injected problems found (recall and precision >= 90% against the injected truth), group-aware
splits that never split a group (property test), label checks, the near-duplicate search's chunking, the CLI's
--strict status, and the recipe's summary."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from detr_hf import cli
from detr_hf.data import detection_features, make_synthetic_dataset, save_detection_dataset
from detr_hf.data.splits import carve_validation, group_key
from detr_hf.data.synthetic_problems import inject_problems
from detr_hf.health import check_dataset, health_summary, model_stride
from detr_hf.health import duplicates as duplicates_module
from detr_hf.health.fingerprints import Fingerprints


@pytest.fixture(scope="module")
def clean() -> DatasetDict:
    return make_synthetic_dataset(num_train=80, num_val=24, image_size=96, max_size=40, seed=3)


@pytest.fixture(scope="module")
def injected(clean):
    return inject_problems(clean, seed=1, near_copies=10, exact_copies=3, spanning_groups=3, zero_area=10,
                           duplicate_boxes=10, swap_fraction=0.3)  # fmt: skip


def recall_precision(truth: set, found: set) -> tuple[float, float]:
    hits = len(truth & found)
    return hits / max(len(truth), 1), hits / max(len(found), 1)


def test_injected_problems_are_found_with_90_percent_recall_and_precision(injected):
    dataset, truth = injected
    report = check_dataset(dataset, group_by=truth.group_pattern)
    leak = report.leakage["validation"]
    assert leak["with_twin_in_train"] == len(leak["examples"])  # all listed, so precision is measurable
    found = {e["file_name"]: e for e in leak["examples"]}
    injected_copies = dict(truth.near_copies + truth.exact_copies)
    checks = {
        "leakage": (set(injected_copies), set(found)),
        "spanning groups": (set(truth.spanning_groups), {g["group"] for g in report.groups["spanning"]}),
        "zero-area boxes": (set(truth.zero_area), {(e["split"], e["file_name"], e["box"])
                                                   for e in report.labels.examples["zero_area"]}),
        "duplicate labels": ({t[:3] for t in truth.duplicate_boxes}, {(e["split"], e["file_name"], e["box"])
                                                                      for e in report.labels.examples["duplicate_label"]}),
    }  # fmt: skip
    for name, (expected, got) in checks.items():
        assert expected, name  # something was injected
        recall, precision = recall_precision(expected, got)
        assert recall >= 0.9 and precision >= 0.9, (name, recall, precision, expected ^ got)
    # the twin named is the image copied, and byte-identical copies are told apart from re-encoded ones
    assert sum(found[f]["twin_file_name"] == t for f, t in injected_copies.items() if f in found) >= 0.9 * len(found)
    assert {f for f, e in found.items() if e["kind"] == "exact"} == {f for f, _ in truth.exact_copies}
    assert truth.swapped and all(s == "validation" for s, *_ in truth.swapped)  # the generator's fourth problem
    assert not report.ok and {p.code for p in report.errors} >= {"leakage", "group_spans_splits", "zero_area"}


def test_the_clean_dataset_passes(clean):
    report = check_dataset(clean, group_by=r"^synthetic/(\w+)/")  # the split: no group spans
    assert report.ok, str(report)
    assert report.leaked_images == 0 and report.duplicates["groups_total"] == 0
    assert report.labels.broken == 0


def test_near_copies_are_missed_by_a_zero_threshold_and_found_by_the_default(injected):
    dataset, truth = injected
    strict = check_dataset(dataset, near_threshold=0, num_proc=2)  # two worker processes read the images
    found = {e["file_name"] for e in strict.leakage["validation"]["examples"]}
    assert found >= {f for f, _ in truth.exact_copies}
    assert len(found & {f for f, _ in truth.near_copies}) < len(truth.near_copies) // 2


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 50)), min_size=0, max_size=60, unique=True),
    val_fraction=st.floats(0, 1),
    seed=st.integers(0, 3),
)
def test_a_group_never_lands_in_two_splits(groups, val_fraction, seed):
    names = [f"patient{g:02d}/frame{f:03d}.png" for g, f in groups]
    for chosen in (
        carve_validation(names, val_fraction, seed, group_by=r"^(patient\d+)/"),
        carve_validation(names, val_fraction, seed, groups=[n.split("/")[0] for n in names]),
    ):
        split_of: dict[str, set] = {}
        for name, to_validation in zip(names, chosen):
            split_of.setdefault(group_key(name, r"^(patient\d+)/"), set()).add(to_validation)
        assert all(len(s) == 1 for s in split_of.values())
        if len(split_of) >= 2 and val_fraction > 0:  # both splits get a group
            assert any(chosen) and not all(chosen)


def _png(width: int, height: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    array = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _row(k: int, boxes: list, categories: list, width: int = 100, height: int = 80) -> dict:
    n = len(boxes)
    return {"image_id": k, "image": {"bytes": _png(width, height, k), "path": None}, "width": width,
            "height": height, "file_name": f"rec{k // 2}/img{k}.png",
            "objects": {"id": list(range(n)), "area": [b[2] * b[3] for b in boxes], "bbox": boxes,
                        "category": categories, "iscrowd": [0] * n, "difficult": [0] * n, "truncated": [0] * n}}  # fmt: skip


def test_label_checks_and_the_scale_small_boxes_need():
    rows = [
        _row(0, [[10, 10, 40, 30], [70, 50, 40, 20]], [0, 1]),  # the second reaches outside (x1 = 110 > 100)
        _row(1, [[5, 5, 8, 6], [20, 20, 60, 2]], [0, 0]),  # an 8 px box; a 30:1 box
        _row(2, [[1, 1, 20, 20]] * 3, [1, 0, 0]),  # the third repeats the second (same class): one duplicate
    ]
    ds = DatasetDict({"train": Dataset.from_list(rows, features=detection_features(["a", "b"]))})
    # shortest edge 80 -> scale 1: the 8 px box is below stride 32 and needs 4x: shortest edge 320
    report = check_dataset(ds, stride=32, shortest_edge=80, longest_edge=None, num_queries=2, near_duplicates=False)
    counts = report.labels.counts
    assert counts["outside_image"] == 1 and counts["duplicate_label"] == 1 and counts["zero_area"] == 0
    assert counts["extreme_aspect"] == 1 and counts["over_query_budget"] == 1  # 3 objects, 2 queries
    small = [e["box"] for e in report.labels.examples["below_stride"] if e["file_name"] == "rec0/img1.png"]
    assert small == [0]
    assert report.labels.learnable_at["shortest_edge"] >= 320 * 20 / 32  # the 20 px boxes need 1.6x, the 8 px 4x
    assert report.labels.images_per_class["train"] == {"a": 3, "b": 2}
    assert report.labels.boxes_per_class["train"] == {"a": 5, "b": 2}
    assert report.labels.imbalance() == 2.5
    assert report.labels.examples["duplicate_label"][0]["box"] == 2


def test_chunked_near_search_equals_all_pairs(monkeypatch):
    rng = np.random.default_rng(0)
    n = 300
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    fp = Fingerprints.empty(n)
    fp.readable[:] = True
    fp.digest[:, 0] = np.arange(n, dtype=np.uint64)  # all distinct files
    flips = rng.integers(0, 64, (n, 2))
    fp.phash[:] = base[np.arange(n) % 40] ^ (np.uint64(1) << flips[:, 0].astype(np.uint64))
    fp.dhash[:] = base[np.arange(n) % 40] ^ (np.uint64(1) << flips[:, 1].astype(np.uint64))
    monkeypatch.setattr(duplicates_module, "_CHUNK_ELEMENTS", 997)  # a few rows a chunk, unaligned
    # members of one base differ by at most 4 bits: each base is one group
    found = duplicates_module.find_duplicates(fp, np.arange(n) < 150, near_threshold=4)
    pairs = {(i, j) for i, j, *_ in found.near_pairs}
    bits = np.bitwise_count(fp.phash[:, None] ^ fp.phash[None]) + np.bitwise_count(fp.dhash[:, None] ^ fp.dhash[None])
    expected = {(i, j) for i, j in zip(*np.nonzero(bits <= 4)) if i < j}
    assert pairs == expected and len(found.groups) == 40
    assert (found.twin[150:] >= 0).all() and (found.twin[found.twin[150:]] == -1).all()


def test_cli_strict_status_reports_and_conversion_fixes(tmp_path, injected, clean, capsys):
    dataset, truth = injected
    save_detection_dataset(dataset, tmp_path / "bad")
    save_detection_dataset(clean, tmp_path / "clean")
    out = tmp_path / "report"
    assert cli.main(["check", str(tmp_path / "bad"), "--group-by", truth.group_pattern, "--output", str(out)]) == 0
    assert cli.main(["check", str(tmp_path / "bad"), "--strict"]) == 1
    assert cli.main(["check", str(tmp_path / "clean"), "--strict"]) == 0
    assert "twin in train" in capsys.readouterr().out
    data = json.loads((out / "health_report.json").read_text(encoding="utf-8"))
    assert data["ok"] is False and data["leakage"]["validation"]["with_twin_in_train"] >= 12
    for name in ("health_report.md", "health_report.html", "class_histogram.png", "box_sizes.png", "duplicates_01.png"):
        assert (out / name).is_file(), name
    assert "duplicates_01.png" in (out / "health_report.html").read_text(encoding="utf-8")
    markdown = (out / "health_report.md").read_text(encoding="utf-8")
    for text in ("## Duplicates and leakage", "| zero_area | error | 10 |", "![box sizes](box_sizes.png)"):
        assert text in markdown, text
    # a COCO folder with a zero-area box: dropped at conversion, so only the conversion report shows it
    folder = tmp_path / "coco"
    folder.mkdir()
    Image.open(io.BytesIO(_png(40, 30, 0))).save(folder / "a.png")
    Image.open(io.BytesIO(_png(40, 30, 1))).save(folder / "b.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                       {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 8], "area": 0, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "cat"}]}  # fmt: skip
    (folder / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
    assert cli.main(["check", str(folder), "--strict", "--no-near"]) == 1
    assert "box_degenerate 1" in capsys.readouterr().out


def test_group_by_through_convert_and_load(tmp_path, clean):
    from detr_hf.data import load_detection_dataset

    train = clean["train"].map(lambda r, k: {"file_name": f"flight{k % 7}/{k:03d}.png"}, with_indices=True)
    save_detection_dataset(DatasetDict({"train": train}), tmp_path / "saved")
    for group_by in (r"^(flight\d)/", None):
        ds = load_detection_dataset(tmp_path / "saved", val_fraction=0.3, group_by=group_by, verbose=False)
        groups = {s: {f.split("/")[0] for f in ds[s]["file_name"]} for s in ds}
        if group_by is not None:
            assert not groups["train"] & groups["validation"] and groups["validation"]
        else:  # by file name, flights are split: what group_by prevents
            assert groups["train"] & groups["validation"]
    assert cli.main(["convert", str(tmp_path / "saved"), "-o", str(tmp_path / "out"), "--val-fraction", "0.3",
                     "--group-by", r"^(flight\d)/"]) == 0  # fmt: skip
    assert cli.main(["check", str(tmp_path / "out"), "--group-by", r"^(flight\d)/", "--strict", "--no-near"]) == 0


def test_recipe_summary_and_model_stride(clean):
    from detr_hf.configuration_deformable import DeformableDetrConfig
    from detr_hf.configuration_detr import DetrConfig

    assert model_stride(DetrConfig()) == 32 and model_stride(DeformableDetrConfig()) == 8
    text = health_summary(clean, stride=32, shortest_edge=96, num_queries=5)
    assert "0 groups of identical files, 0 of near duplicates" in text and text.endswith("OK")
    assert "boxes below the stride (32 px)" in text and "up to 6 objects per image for 5 queries" in text
    skipped = health_summary(clean, near_duplicates_up_to=10, exact_duplicates_up_to=10)
    assert "duplicates not searched above 10 images" in skipped
