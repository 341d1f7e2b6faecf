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
    warn_if_worse_than_raw,
    worse_than_raw,
)
from regbench.evaluation.panel import calibration_panel, negative_log_likelihood

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
    # Only this warning: a calibrator that makes NLL worse than raw has its own (tested below).
    warnings = [record.getMessage() for record in caplog.records
                if record.levelno == logging.WARNING and record.getMessage().startswith("calibrators (")]
    assert warnings == ([f"calibrators (temperature, isotonic) fitted on {examples} validation "
                         f"examples, fewer than 300: their test/*@<calibrator> metrics are noisy; "
                         f"raise dataset.val_size to compare them"] if warned else [])


# --- isotonic's floor and the NLL flag --------------------------------------------------------------

def confident_data(examples: int, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """An accurate, confident model as on MNIST (test acc 0.966, NLL 0.12): the true class's logit
    9 above Gaussian noise of sd 2.5, so a few mistakes give the true class a tiny probability."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (examples,), generator=generator)
    logits = 2.5 * torch.randn(examples, classes, generator=generator)
    logits[torch.arange(examples), labels] += 9.0
    return logits, labels


def isotonic_on_zero_one_targets(val_logits, val_labels, test_logits) -> np.ndarray:
    """The isotonic calibrator as it was: 1[y = k] targets, rows renormalized."""
    from sklearn.isotonic import IsotonicRegression

    p, q = val_logits.double().softmax(1).numpy(), test_logits.double().softmax(1).numpy()
    scores = [IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p[:, k], val_labels == k)
              .predict(q[:, k]) for k in range(p.shape[1])]
    scores = np.stack(scores, axis=1)
    return scores / scores.sum(axis=1, keepdims=True)


def test_isotonic_is_the_zero_one_fit_mapped_onto_platts_targets():
    # Pool adjacent violators is equivariant to an increasing affine map of the targets: per class,
    # the fit on Platt's targets is t- + (t+ - t-) x the fit on 0/1 targets, t+ = (N+ + 1)/(N+ + 2),
    # t- = 1/(N- + 2). Checked before renormalization through one class's model.
    from sklearn.isotonic import IsotonicRegression

    from regbench.evaluation.calibrators import smoothed_targets

    val_logits, val_labels = confident_data(400, seed=1)
    p = val_logits.double().softmax(1).numpy()[:, 3]
    positive = (val_labels == 3).numpy()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    assert smoothed_targets(positive).tolist() == [(n_pos + 1) / (n_pos + 2) if y else 1 / (n_neg + 2)
                                                   for y in positive]
    zero_one = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, positive).predict(p)
    smoothed = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
        p, smoothed_targets(positive)).predict(p)
    low, high = 1 / (n_neg + 2), (n_pos + 1) / (n_pos + 2)
    assert smoothed == pytest.approx(low + (high - low) * zero_one, abs=1e-12)
    assert zero_one.min() == 0 and smoothed.min() == pytest.approx(low)


def test_isotonic_gives_no_class_probability_zero_and_fixes_the_mnist_like_nll():
    # The case: isotonic fitted on a validation split of 1,000 gave some test examples
    # probability 0 for their class (NLL floor 1e-12: 27.6 nats each): NLL 0.33 against 0.12 raw.
    val_logits, val_labels = confident_data(1000, seed=1)
    test_logits, test_labels = confident_data(10000, seed=2)
    rows = torch.arange(len(test_labels))
    before = torch.from_numpy(isotonic_on_zero_one_targets(val_logits, val_labels.numpy(), test_logits))
    after = fit_calibrator("isotonic", val_logits, val_labels)(test_logits).double()
    raw = test_logits.double().softmax(1)
    assert (before[rows, test_labels] == 0).float().mean() > 0.005  # the problem, reproduced
    nll = {name: negative_log_likelihood(probabilities, test_labels)
           for name, probabilities in (("raw", raw), ("before", before), ("after", after))}
    assert nll["raw"] == pytest.approx(0.1206, abs=1e-3)
    assert nll["before"] == pytest.approx(0.3265, abs=1e-3)
    assert nll["after"] == pytest.approx(0.1419, abs=1e-3)
    # Every class keeps at least the floor 1/(N- + 2) over a row sum below K = 10.
    assert after.min() > 1 / (1000 + 2) / 10
    # With a validation split of 5,000 the floored isotonic beats raw (0.1180 < 0.1206); the 0/1 fit
    # did not (0.1604).
    val_logits, val_labels = confident_data(5000, seed=1)
    larger = fit_calibrator("isotonic", val_logits, val_labels)(test_logits).double()
    assert negative_log_likelihood(larger, test_labels) == pytest.approx(0.1180, abs=1e-3)


def test_a_calibrator_that_makes_test_nll_worse_than_raw_warns_in_one_line(caplog):
    val_logits, val_labels = confident_data(1000, seed=1)
    test_logits, test_labels = confident_data(2000, seed=2)
    metrics, _ = calibration_panel(val_logits, val_labels, test_logits, test_labels,
                                   calibrators=["isotonic"])
    assert worse_than_raw(metrics) == ["isotonic"]
    assert metrics["test/nll@isotonic"] > metrics["test/nll"]
    caplog.clear()  # what the panel itself logged
    with caplog.at_level(logging.WARNING, logger="regbench"):
        warn_if_worse_than_raw(metrics)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"calibrator isotonic made test NLL worse than the raw softmax "
        f"({metrics['test/nll@isotonic']:.4f} > {metrics['test/nll']:.4f}): its probabilities are "
        "further from the labels than the model's own; prefer raw or temperature scaling, or raise "
        "dataset.val_size"]
    assert worse_than_raw({"test/nll": 0.2, "test/nll@platt": 0.2, "test/ece@platt": 0.9,
                           "test/nll@vector": 0.19}) == []
    assert worse_than_raw({"test/nll": 0.2, "test/nll@platt": 0.21, "test/nll@vector": 0.3},
                          ) == ["platt", "vector"]
    assert worse_than_raw({"test/nll@platt": 0.3}) == []  # no raw NLL, nothing to compare with
