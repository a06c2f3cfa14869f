"""The notebooks run top to bottom on smoke settings, show what they promise, and are committed executed."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FINETUNE = "finetune_custom_dataset.ipynb"
ATTENTION = "object_queries_attention.ipynb"


@pytest.fixture
def smoke_env(monkeypatch, tmp_path):
    """The kernel inherits these: tiny settings, outputs under tmp_path, and nothing that could reach the Hub."""
    monkeypatch.setenv("DETR_HF_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("DETR_HF_NOTEBOOK_WORK", str(tmp_path / "_work"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("DETR_HF_HUB_REPO", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two notebooks may run side by side under pytest-xdist
    return tmp_path


def _execute(name: str, folder: Path) -> nbformat.NotebookNode:
    """Runs a copy of the committed notebook, its outputs cleared, with `folder` as the working directory."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, folder / name)
    NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(folder)}}
    ).execute()  # raises CellExecutionError, naming the cell, on the first failing cell
    nbformat.write(notebook, folder / name)  # kept for a look when an assertion below fails
    return notebook


def _outputs(notebook: nbformat.NotebookNode) -> list:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def _text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for output in _outputs(notebook):
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


def _image_count(notebook: nbformat.NotebookNode) -> int:
    return sum(any(key.startswith("image/") for key in output.get("data", {})) for output in _outputs(notebook))


def test_finetune_notebook_converts_trains_evaluates_predicts_and_hands_its_model_to_the_attention_one(smoke_env):
    folder = smoke_env
    notebook = _execute(FINETUNE, folder)
    text = _text(notebook)
    # the conversion report names the three planted labeling mistakes
    assert "Conversion report: voc" in text
    for kind in ("box_clipped", "box_degenerate", "missing_image"):
        assert kind in text, kind
    # the metrics table, the files the recipe wrote, and the dry-run of the Hub upload
    assert "AP50" in text and "AR100" in text and "triangle" in text
    run = folder / "_work" / "finetune" / "run"
    for name in ("model.safetensors", "config.json", "eval_results.json", "loss_curve.png", "README.md"):
        assert (run / name).is_file(), name
    assert "would upload" in text and "model.safetensors" in text and "pushed to" not in text
    # dataset stats, sample grid, loss curve, ground truth vs predictions
    assert _image_count(notebook) >= 4

    attention = _execute(ATTENTION, folder)
    assert f"{run}: DeformableDetrForObjectDetection" in _text(attention)  # the model it was handed
    assert not (folder / "_work" / "attention").exists()  # so it trained none of its own
    assert _image_count(attention) == 5  # two detections on each of two images, the per-layer statistics


def test_attention_notebook_trains_its_own_model_when_alone(smoke_env):
    folder = smoke_env
    notebook = _execute(ATTENTION, folder)
    text = _text(notebook)
    assert (folder / "_work" / "attention" / "run" / "model.safetensors").is_file()
    assert "DeformableDetrForObjectDetection, 10 queries, 3 decoder layers" in text
    assert "sampling_points (3, 8, 3, 4, 2)" in text  # (layers, heads, levels, points, xy) of the first detection
    # two detections on each of two images, sampling points per layer, and the per-layer statistics
    assert _image_count(notebook) == 5
    assert "layer 3: weight inside the box" in text


@pytest.mark.parametrize("name", [FINETUNE, ATTENTION])
def test_committed_notebooks_are_executed_without_errors_and_small(name):
    path = NOTEBOOKS / name
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count is not None for cell in code), "commit the notebook with its outputs"
    counts = [cell.execution_count for cell in code]
    assert counts == sorted(counts), "run top to bottom in one kernel before committing"
    assert not [o for o in _outputs(notebook) if o.output_type == "error"]
    assert _image_count(notebook) >= 4
    assert "DETR_HF_NOTEBOOK_SMOKE" not in _text(notebook) and "smoke=True" not in _text(notebook)
    assert path.stat().st_size < 2 * 1024 * 1024
