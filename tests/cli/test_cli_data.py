"""`detr-hf convert` and `detr-hf inspect`: outputs on disk, exit codes, messages; subcommands can be added."""

from __future__ import annotations

import json

import pytest
from data_fixtures import CLASSES, TRUTH, voc_xml, write_voc
from datasets import DatasetDict, load_from_disk
from PIL import Image

from detr_hf import cli
from detr_hf.data import CategoryMapping, ConversionReport


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "voc"
    write_voc(root)
    return root


def convert(source, output, *extra, cache):
    return cli.main(["convert", str(source), "--output", str(output), "--cache-dir", str(cache), *extra])


def test_convert_saves_dataset_report_and_mapping(voc, tmp_path, capsys):
    out = tmp_path / "out"
    status = convert(voc, out, "--format", "voc", "--val-fraction", "0.5", "--seed", "0", cache=tmp_path / "c")
    assert status == 0
    printed = capsys.readouterr().out
    assert "Conversion report: voc" in printed and "saved to" in printed
    dataset = load_from_disk(str(out))
    assert set(dataset) == {"train", "validation"}
    assert sum(d.num_rows for d in dataset.values()) == len(TRUTH)
    assert dataset["train"].features["objects"]["category"].feature.names == CLASSES
    report = ConversionReport.load(out / "conversion_report.json")
    assert report.num_images == 3 and report.num_boxes == 3 and report.splits["validation"].images == 2
    assert CategoryMapping.load(out).names == CLASSES


def test_convert_strict_failure_names_file_and_record(voc, tmp_path, capsys):
    (voc / "Annotations" / "b.xml").write_text(voc_xml("b.png", 40, 60, [("person", (0, 0, 40, 61))]))
    status = convert(voc, tmp_path / "out", "--strict", cache=tmp_path / "c")
    assert status == 2
    error = capsys.readouterr().err
    assert "Annotations/b.xml: object 1" in error and "box_clipped" in error
    assert not (tmp_path / "out").exists()
    assert convert(voc, tmp_path / "out", cache=tmp_path / "c") == 0  # without --strict: fixed and reported
    assert ConversionReport.load(tmp_path / "out").count("box_clipped") == 1


def test_convert_options_reach_the_loader(voc, tmp_path):
    (voc / "Annotations" / "a.xml").write_text(
        voc_xml("a.jpg", 64, 48, [("dog", (4, 6, 30, 40)), ("cat", (32, 8, 60, 44))], flags={1: (1, 0)})
    )
    out = tmp_path / "out"
    extra = ["--exclude-difficult", "--val-fraction", "0", "--class-names", "person,dog,cat", "--voc-zero-based"]
    assert convert(voc, out, *extra, cache=tmp_path / "c") == 0
    train = load_from_disk(str(out))["train"]
    assert train.features["objects"]["category"].feature.names == ["person", "dog", "cat"]
    a = next(r for r in train if r["file_name"].endswith("a.jpg"))
    assert a["objects"]["bbox"] == [[5, 7, 25, 33]]  # 0-based corners taken as written; the difficult cat left out


def test_push_to_hub_pushes_dataset_and_sidecar_files(voc, tmp_path, monkeypatch):
    pushed, uploaded = [], []
    monkeypatch.setattr(DatasetDict, "push_to_hub", lambda self, repo, private=False: pushed.append((repo, private)))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", lambda self, **kw: uploaded.append(kw["path_in_repo"]))
    assert convert(voc, tmp_path / "out", "--push-to-hub", "me/mine", "--private", cache=tmp_path / "c") == 0
    assert pushed == [("me/mine", True)]
    assert sorted(uploaded) == ["categories.json", "conversion_report.json"]


def test_inspect_prints_counts_and_writes_plot_and_json(voc, tmp_path, capsys):
    out = tmp_path / "out"
    assert convert(voc, out, "--val-fraction", "0", cache=tmp_path / "c") == 0
    capsys.readouterr()
    stats_json = tmp_path / "stats.json"
    assert cli.main(["inspect", str(out), "--json", str(stats_json)]) == 0
    printed = capsys.readouterr().out
    assert "3 classes" in printed and "plot saved to" in printed
    stats = json.loads(stats_json.read_text())["splits"]["train"]
    assert (stats["images"], stats["negatives"], stats["boxes"]) == (3, 1, 3)
    assert stats["boxes_per_class"] == {"cat": 1, "dog": 1, "person": 1}
    # areas 26*34=884 and 28*36=1008 are small (< 32^2 = 1024); 40*60 = 2400 is medium
    assert (stats["small"], stats["medium"], stats["large"]) == (2, 1, 0)
    with Image.open(out / "dataset_stats.png") as plot:
        assert plot.size[0] > 800 and plot.size[1] > 500


def test_bad_input_exit_code_and_message(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["convert", str(empty), "--output", str(tmp_path / "o")]) == 2
    assert "no annotations in a known format" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["convert", str(empty), "--output", str(tmp_path / "o"), "--format", "nope"])


def test_subcommands_can_be_added(monkeypatch, capsys):
    def add_hello(subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(run=lambda args: print(f"hello {args.name}") or 3)

    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, add_hello])
    assert cli.main(["hello", "--name", "detr"]) == 3
    assert capsys.readouterr().out.strip() == "hello detr"
    help_text = cli.build_parser().format_help()
    assert all(name in help_text for name in ("convert", "inspect", "hello"))
