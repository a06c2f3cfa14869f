"""Calibration: ECE on a hand case, temperature scaling on a deliberately overconfident detector."""

from __future__ import annotations

import numpy as np
import pytest
from report_fixtures import OverconfidentStub, detection_split, random_objects

from detr_hf.evaluation import evaluate_images
from detr_hf.evaluation.calibration import apply_temperature, calibrate, fit_temperature, reliability
from detr_hf.evaluation.matching import match_images, split_images


def test_ece_of_a_hand_built_case():
    # bin (0.8, 0.9]: 0.9 twice, one right -> gap 0.4; bin (0.0, 0.1]: 0.1 twice, none right -> gap 0.1
    result = reliability(np.array([0.9, 0.9, 0.1, 0.1]), np.array([True, False, False, False]), bins=10)
    assert result.ece == pytest.approx(0.25)
    assert result.count.sum() == 4 and result.count[8] == 2 and result.count[0] == 2


def test_temperature_is_the_logit_scaling_of_a_sigmoid_head():
    logits = np.array([-3.0, -0.5, 0.0, 1.5, 4.0])
    scores = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(apply_temperature(scores, 2.5), 1 / (1 + np.exp(-logits / 2.5)), rtol=1e-6)


def test_fit_recovers_the_sharpening_of_calibrated_scores():
    rng = np.random.default_rng(0)
    q = rng.uniform(0.05, 0.95, 20000)
    correct = rng.random(q.size) < q
    overconfident = apply_temperature(q, 1 / 3)  # logit * 3
    assert fit_temperature(overconfident, correct) == pytest.approx(3.0, rel=0.1)


def test_temperature_scaling_lowers_ece_on_held_out_images():
    truth = random_objects(160, seed=3)
    _, evaluator = evaluate_images(OverconfidentStub(truth, sharpness=3.0), detection_split(truth), show_progress=False)
    images = match_images(evaluator)
    fit, held_out = split_images(images)
    assert not set(fit) & set(held_out) and len(fit) + len(held_out) == len(images)
    result = calibrate(images, fit, held_out)
    assert result.temperature > 2.0  # the stub sharpened the log-odds 3x
    assert result.ece_before > 0.08
    assert result.ece_after < 0.5 * result.ece_before
