"""The recipe's ``tiling`` option: training reads tiles, evaluation runs sliced inference on the full images."""

from __future__ import annotations

import json

import pytest
from recipe_runs import load_recipe, recipe_arguments

from detr_hf.training import load_training_config


def test_recipe_trains_on_tiles_and_evaluates_full_images_sliced(tmp_path, caplog):
    recipe = load_recipe()
    calls = []
    evaluate_sliced = recipe.evaluate_sliced

    def counting(*args, **kwargs):
        calls.append(args[2].num_rows)  # the evaluation split: full images
        return evaluate_sliced(*args, **kwargs)

    recipe.evaluate_sliced = counting
    tiling = {"tile_size": 48, "overlap": 0.25, "min_visibility": 0.3, "empty_fraction": 0.5}
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        recipe.main(recipe_arguments(out, synthetic={"num_train": 4, "num_val": 2, "image_size": 96}, tiling=tiling,
                                     scales=[48], max_size=64, num_epochs=1, max_steps=2))  # fmt: skip
    assert calls == [2]  # the final evaluation, on the 2 full validation images
    assert "Tiling report: 4 images ->" in caplog.text and "objects per tile" in caplog.text
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 0 <= metrics["map"] <= 1


def test_unknown_tiling_keys_are_refused(tmp_path):
    from detr_hf.training import check_config

    config = load_training_config(None, ["--tiling", "{tile_size: 512, overlap: 0.2, min_visiblity: 0.3}"])
    with pytest.raises(ValueError, match="min_visiblity"):
        check_config(config)
