"""Post-hoc calibrators (evaluation/calibrators.py): what each fits, on what, against scikit-learn."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import calibrated_data
from regbench.config import CalibratorName, ConfigError
from regbench.evaluation.calibration_errors import (
    calibration_errors,
    expected_calibration_error,
)
from regbench.evaluation.calibrators import (
    CALIBRATORS,
    fit_calibrator,
    fit_sigmoid,
    fit_temperature,
)
from regbench.evaluation.panel import calibration_panel

ALL = [name for name in CALIBRATORS]


@pytest.mark.parametrize("name", ALL)
def test_calibrated_input_stays_nearly_unchanged(name, splits):
    (val_z, val_y), (test_z, test_y) = splits
    probabilities = fit_calibrator(name, val_z, val_y)(test_z)
    raw = test_z.softmax(dim=1)
    assert (probabilities - raw).abs().mean() < 0.03
    assert expected_calibration_error(raw, test_y) < 0.03
    assert expected_calibration_error(probabilities, test_y) < 0.045


@pytest.mark.parametrize("name", ALL)
def test_over_confident_input_is_brought_back(name, splits):
    (val_z, val_y), (test_z, test_y) = splits
    raw = expected_calibration_error((3 * test_z).softmax(dim=1), test_y)
    calibrated = expected_calibration_error(fit_calibrator(name, 3 * val_z, val_y)(3 * test_z), test_y)
    assert raw > 0.15
    assert calibrated < 0.25 * raw


def test_temperature_of_logits_scaled_by_three_is_about_three(splits):
    (val_z, val_y), _ = splits
    assert fit_calibrator("temperature", 3 * val_z, val_y).scalars["temperature"] == pytest.approx(3, rel=0.1)


@pytest.mark.parametrize("name", ALL)
def test_outputs_are_probabilities(name, splits):
    (val_z, val_y), (test_z, _) = splits
    probabilities = fit_calibrator(name, 3 * val_z, val_y)(3 * test_z[:300])
    assert probabilities.shape == (300, 5)
    assert (probabilities >= 0).all()
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(300), atol=1e-5)


def test_fitting_never_sees_the_test_labels(splits):
    (val_z, val_y), (test_z, test_y) = splits
    shuffled = test_y[torch.randperm(len(test_y), generator=torch.Generator().manual_seed(3))]
    _, first = calibration_panel(val_z, val_y, test_z, test_y, calibrators=ALL)
    _, second = calibration_panel(val_z, val_y, test_z, shuffled, calibrators=ALL)
    for name in ["raw", *ALL]:
        assert torch.equal(first[name], second[name]), name


def test_calibrator_is_a_function_of_the_validation_split(splits):
    (val_z, val_y), (test_z, _) = splits
    for name in ALL:
        changed = fit_calibrator(name, val_z, (val_y + 1) % 5)(test_z)
        assert not torch.allclose(changed, fit_calibrator(name, val_z, val_y)(test_z), atol=1e-3), name


def test_platt_fit_matches_scikit_learns_private_sigmoid_calibration():
    calibration = pytest.importorskip("sklearn.calibration")
    if not hasattr(calibration, "_sigmoid_calibration"):
        pytest.skip("scikit-learn no longer has _sigmoid_calibration")
    rng = np.random.default_rng(0)
    feature = rng.normal(size=200) * 5
    positive = rng.uniform(size=200) < 1 / (1 + np.exp(-0.5 * feature - 1))
    slope, intercept = fit_sigmoid(feature, positive)
    a, b = calibration._sigmoid_calibration(feature, positive.astype(float))  # sigmoid(-(a x + b))
    assert (slope, intercept) == pytest.approx((-a, -b), abs=1e-5)


def test_matrix_scaling_refused_on_a_small_validation_split():
    logits, labels = calibrated_data(1099, classes=10)
    with pytest.raises(ConfigError) as error:
        fit_calibrator("matrix", logits, labels)
    message = str(error.value)
    assert "\n" not in message
    assert "1099 validation examples for 110 parameters" in message and "n_val >= 1100" in message
    logits, labels = calibrated_data(120, classes=3)  # 10 * (9 + 3): just enough
    assert fit_calibrator("matrix", logits, labels)(logits).shape == (120, 3)


def test_unknown_calibrator_and_empty_validation_split():
    logits, labels = calibrated_data(10)
    with pytest.raises(ValueError, match="unknown calibrator 'histogram'"):
        fit_calibrator("histogram", logits, labels)
    with pytest.raises(ValueError, match="non-empty validation split"):
        fit_calibrator("temperature", logits[:0], labels[:0])


def test_the_config_schema_names_every_calibrator():
    assert {name.value for name in CalibratorName} == set(CALIBRATORS)


def test_temperature_scaling_fixes_an_overconfident_model():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 10, generator=generator)
    labels = torch.multinomial(true_logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    overconfident = 3.0 * true_logits  # the calibrated temperature is 3
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    nll_before = F.cross_entropy(overconfident, labels).item()
    nll_after = F.cross_entropy(overconfident / temperature, labels).item()
    assert nll_after < nll_before - 0.1
    # It is the minimum: nearby temperatures are no better.
    for other in (temperature * 0.9, temperature * 1.1):
        assert F.cross_entropy(overconfident / other, labels).item() >= nll_after
    ece_before = calibration_errors(overconfident.softmax(1), labels)[0]
    ece_after = calibration_errors((overconfident / temperature).softmax(1), labels)[0]
    assert ece_after < ece_before / 2


@pytest.mark.parametrize("examples, warned", [(299, True), (300, False)])
def test_calibrators_fitted_on_fewer_than_300_validation_examples_warn_in_one_line(
        examples, warned, caplog):
    val_logits, val_labels = calibrated_data(examples, seed=3)
    test_logits, test_labels = calibrated_data(50, seed=4)
    with caplog.at_level(logging.WARNING, logger="regbench"):
        calibration_panel(val_logits, val_labels, test_logits, test_labels,
                          calibrators=["temperature", "isotonic"])
        calibration_panel(val_logits, val_labels, test_logits, test_labels, calibrators=[])
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == ([f"calibrators (temperature, isotonic) fitted on {examples} validation "
                         f"examples, fewer than 300: their test/*@<calibrator> metrics are noisy; "
                         f"raise dataset.val_size to compare them"] if warned else [])
