"""Post-hoc calibrators, calibration metrics against hand calculations, the panel, its figure and
its report pieces."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from conftest import train_in_process
from regbench.config import CalibratorName, ConfigError
from regbench.evaluation.calibration_errors import (
    adaptive_calibration_error,
    area_under_risk_coverage,
    classwise_calibration_error,
    debiased_l2_calibration_error,
    expected_calibration_error,
    smooth_ece,
    smooth_ece_of,
)
from regbench.evaluation.calibrators import CALIBRATORS, fit_calibrator, fit_sigmoid
from regbench.evaluation.figures import reliability_panel
from regbench.evaluation.metrics import brier_score
from regbench.evaluation.panel import (
    DEFAULT_CALIBRATORS,
    METRICS,
    calibration_metrics,
    calibration_panel,
    negative_log_likelihood,
)
from regbench.report.calibration import calibration_table_markdown, ranking_flips

ALL = [name for name in CALIBRATORS]


def calibrated_data(examples: int, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels drawn from their own softmax: calibrated by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(examples, classes, generator=generator) * 2
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.fixture(scope="module")
def splits():
    return calibrated_data(1000, seed=1), calibrated_data(2000, seed=2)


# --- calibrators --------------------------------------------------------------------------------

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


# --- metrics against hand calculations -----------------------------------------------------------

# Top-label confidence 1.0 (correct), 1.0 (wrong), 0.62 (correct), 0.7 (wrong).
TINY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.62, 0.38], [0.3, 0.7]], dtype=torch.float64)
TINY_LABELS = torch.tensor([0, 0, 0, 0])


def test_ece_by_hand_with_confidence_one_and_empty_bins():
    # Last bin [14/15, 1]: two examples, accuracy 1/2, confidence 1 -> 2/4 * 0.5 = 0.25;
    # bin [9/15, 10/15): 0.62 correct -> 1/4 * 0.38; bin [10/15, 11/15): 0.7 wrong -> 1/4 * 0.7;
    # the 12 other bins are empty.
    assert expected_calibration_error(TINY, TINY_LABELS) == pytest.approx(0.25 + 0.095 + 0.175)


def test_adaptive_ece_by_hand():
    # N = 4 < 15: four bins of one example: mean |correct - confidence| = (0 + 1 + 0.38 + 0.7) / 4.
    assert adaptive_calibration_error(TINY, TINY_LABELS) == pytest.approx(0.52)
    # Two equal-mass bins, sorted by confidence, ties at 1.0 with the wrong one first:
    # {0.62 right, 0.7 wrong}: |0.5 - 0.66| * 2/4 = 0.08; {1.0 wrong, 1.0 right}: |0.5 - 1| * 2/4.
    assert adaptive_calibration_error(TINY, TINY_LABELS, bins=2) == pytest.approx(0.33)
    assert adaptive_calibration_error(TINY.flip(0), TINY_LABELS, bins=2) == pytest.approx(0.33)
    # Five examples in two bins: sizes 3 and 2.
    five = torch.tensor([[0.9, 0.1]] * 5, dtype=torch.float64)
    # sorted: 3 wrong at 0.9 | 2 right at 0.9 -> 3/5 * 0.9 + 2/5 * 0.1
    assert adaptive_calibration_error(five, torch.tensor([0, 1, 0, 1, 1]), bins=2) == pytest.approx(0.58)


def test_classwise_ece_by_hand():
    probabilities = torch.tensor([[0.7, 0.22, 0.08], [0.7, 0.22, 0.08], [0.1, 0.12, 0.78]],
                                 dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    # |sum over a bin of (onehot - p)| per class and bin:
    # class 0: bin of 0.7: |0.3 - 0.7| = 0.4, bin of 0.1: 0.1              -> 0.5
    # class 1: bin of 0.22: |-0.22 + 0.78| = 0.56, bin of 0.12: 0.12       -> 0.68
    # class 2: bin of 0.08: 0.16, bin of 0.78: 0.22                        -> 0.38
    # mean over 3 classes of (sum / N = 3)
    assert classwise_calibration_error(probabilities, labels) == pytest.approx((0.5 + 0.68 + 0.38) / 9)


def test_debiased_l2_by_hand():
    probabilities = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1],
                                  [0.8, 0.1, 0.05, 0.05], [0.9, 0.05, 0.03, 0.02],
                                  [0.95, 0.03, 0.01, 0.01]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 0])
    # bin {0.5, 0.6, 0.7}, all right: (1 - 0.6)^2 - 1 * 0 / 2 = 0.16, weight 1/2
    # bin {0.8 wrong, 0.9 wrong, 0.95 right}: (1/3 - 2.65/3)^2 - (1/3)(2/3)/2 = 0.3025 - 1/9
    expected = math.sqrt(0.5 * 0.16 + 0.5 * (0.3025 - 1 / 9))
    assert debiased_l2_calibration_error(probabilities, labels, bins=2) == pytest.approx(expected)
    # A bias correction larger than the plug-in estimate is clipped at 0.
    assert debiased_l2_calibration_error(TINY, TINY_LABELS, bins=2) == 0.0


def test_aurc_by_hand_with_tied_confidences():
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1])  # 0.9 right, 0.8 wrong and 0.8 right (tied), 0.6 wrong
    # risk of the top i: 0/1; expected 0.5/2 over the two orders of the tie; 1/3; 2/4
    expected = (0 + 0.25 + 1 / 3 + 0.5) / 4
    assert area_under_risk_coverage(probabilities, labels) == pytest.approx(expected)
    assert area_under_risk_coverage(probabilities[[2, 0, 3, 1]], labels[[2, 0, 3, 1]]) == pytest.approx(expected)
    # All right: no risk at any coverage; all wrong: 1.
    assert area_under_risk_coverage(probabilities, probabilities.argmax(dim=1)) == 0.0
    assert area_under_risk_coverage(probabilities, 1 - probabilities.argmax(dim=1)) == 1.0


def test_nll_and_brier_by_hand():
    probabilities = torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    assert negative_log_likelihood(probabilities, labels) == pytest.approx(-(math.log(0.8) + math.log(0.4)) / 2)
    assert brier_score(probabilities, labels).item() == pytest.approx((0.08 + 0.72) / 2)
    # A zero probability for the true class is floored at 1e-12.
    assert negative_log_likelihood(TINY, TINY_LABELS) == pytest.approx((-math.log(1e-12) - math.log(0.62)
                                                                        - math.log(0.3)) / 4)


def test_smooth_ece_matches_relplot():
    # Golden values from relplot 1.0.3's relplot.smECE (its defaults) on the same inputs.
    assert smooth_ece_of(np.array([1.0, 1.0, 0.5, 0.9]), np.array([1.0, 0.0, 1.0, 1.0])) == \
        pytest.approx(0.21079226119946937, abs=1e-12)
    confidence = np.linspace(0.3, 1, 40)
    correct = (np.arange(40) % 3 != 0).astype(float)
    assert smooth_ece_of(confidence, correct) == pytest.approx(0.14156781443630606, abs=1e-12)
    assert smooth_ece(TINY, TINY_LABELS) == pytest.approx(
        smooth_ece_of(np.array([1.0, 1.0, 0.62, 0.7]), np.array([1.0, 0.0, 1.0, 0.0])))


def test_single_class_is_perfectly_calibrated():
    probabilities, labels = torch.ones(7, 1, dtype=torch.float64), torch.zeros(7, dtype=torch.long)
    metrics = calibration_metrics(probabilities, labels)
    assert set(metrics) == set(METRICS)
    assert metrics == pytest.approx({name: 0.0 for name in METRICS}, abs=1e-3)
    assert {k: v for k, v in metrics.items() if k != "smece"} == {name: 0.0 for name in METRICS if name != "smece"}


def test_ece_equals_torchmetrics_including_bin_edges_and_one():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 4, generator=generator) * 3
    probabilities = logits.softmax(dim=1)
    # Confidences exactly on bin edges (torchmetrics' float32 edges k / 15, k >= 8 so that they are
    # the top label) and exactly 1.0.
    edges = torch.linspace(0, 1, 16)[8:15]
    probabilities[:7] = torch.stack([edges, 1 - edges, torch.zeros(7), torch.zeros(7)], dim=1)
    labels_at_edges = torch.tensor([0, 1, 0, 0, 1, 0, 0])
    probabilities[15:20] = torch.tensor([1.0, 0, 0, 0])
    labels = torch.randint(0, 4, (500,), generator=generator)
    labels[:7] = labels_at_edges
    expected = multiclass_calibration_error(probabilities, labels, 4, n_bins=15, norm="l1").item()
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected, abs=1e-6)
    # Right answers exactly on the edges, wrong ones just below: [lo, hi) bins keep them apart.
    near = torch.cat([edges, edges - 0.01, torch.ones(1)])
    probabilities = torch.stack([near, 1 - near], dim=1)
    labels = torch.tensor([0] * 7 + [1] * 7 + [0])
    expected = multiclass_calibration_error(probabilities, labels, 2, n_bins=15, norm="l1").item()
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected, abs=1e-6)


# --- panel, figure, report -----------------------------------------------------------------------

def test_panel_returns_every_key(splits):
    (val_z, val_y), (test_z, test_y) = splits
    metrics, probabilities = calibration_panel(val_z[:180], val_y[:180], test_z[:360], test_y[:360])
    expected = {f"test/{metric}" for metric in METRICS}
    expected |= {f"test/{metric}@{name}" for metric in METRICS for name in DEFAULT_CALIBRATORS}
    assert set(metrics) == expected | {"temperature"}
    assert all(math.isfinite(value) for value in metrics.values())
    assert list(probabilities) == ["raw", *DEFAULT_CALIBRATORS]
    assert DEFAULT_CALIBRATORS == ("temperature", "platt", "vector", "isotonic")
    assert metrics["test/ece"] == pytest.approx(expected_calibration_error(test_z[:360].softmax(1), test_y[:360]))


def test_panel_refuses_matrix_scaling_on_a_small_validation_split(splits):
    (val_z, val_y), (test_z, test_y) = splits
    with pytest.raises(ConfigError, match="matrix scaling refused"):
        calibration_panel(val_z[:100], val_y[:100], test_z, test_y, calibrators=("matrix",))


def test_reliability_panel_one_diagram_per_calibrator_raw_first(splits):
    (val_z, val_y), (test_z, test_y) = splits
    metrics, probabilities = calibration_panel(val_z, val_y, test_z, test_y, calibrators=("vector", "temperature"))
    reordered = {"vector": probabilities["vector"], "raw": probabilities["raw"],
                 "temperature": probabilities["temperature"]}
    eces = {"raw": metrics["test/ece"], "vector": metrics["test/ece@vector"]}
    figure = reliability_panel(reordered, test_y, eces)
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]  # count strips: none
    assert titles == [f"raw: ECE {eces['raw']:.4f}", f"vector: ECE {eces['vector']:.4f}", "temperature"]


def group(label: str, *metrics: dict) -> SimpleNamespace:
    return SimpleNamespace(label=label, completed=[SimpleNamespace(metrics=m) for m in metrics])


def test_calibration_table_mean_std_and_missing_keys():
    groups = [group("none", {"test/ece": 0.1, "test/ece@temperature": 0.02},
                    {"test/ece": 0.3, "test/ece@temperature": 0.04}),
              group("label_smoothing", {"test/ece": 0.05}, {"test/nll": float("nan")}),
              group("empty")]
    table = calibration_table_markdown(groups)
    assert "**test/ece**" in table and "**test/nll**" not in table and "platt" not in table
    assert "| settings | seeds | raw | temperature |" in table
    assert "| none | 2 | 0.2000 ± 0.1414 | 0.0300 ± 0.0141 |" in table
    assert "| label_smoothing | 2 | 0.0500 (n=1) | – |" in table
    assert "| empty | 0 | – | – |" in table
    assert calibration_table_markdown([group("x", {"acc": 1.0})]) == ""


def test_ranking_flips():
    groups = [group("label_smoothing", {"test/ece": 0.01, "test/ece_classwise": 0.05, "test/ece_adaptive": 0.01},
                    {"test/ece": 0.03, "test/ece_classwise": 0.05, "test/ece_adaptive": 0.01}),
              group("dropout", {"test/ece": 0.04, "test/ece_classwise": 0.02, "test/ece_adaptive": 0.03,
                                "test/ece@temperature": 0.01}),
              group("none", {"test/ece@temperature": 0.02})]
    assert ranking_flips(groups) == [
        "ranking flip: best by test/ece is label_smoothing, by test/ece_classwise is dropout"]
    # the same winner everywhere, or a single group with the key: no flip
    assert ranking_flips(groups[:1]) == []
    assert ranking_flips([group("a", {"test/ece": 0.1}), group("b", {})]) == []
    assert ranking_flips([]) == []


# --- on a real run ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_calibrator_lowers_label_smoothings_raw_ece_on_a_real_digits_run(tmp_path):
    run_dir = tmp_path / "run"
    # Label smoothing leaves this MLP under-confident on digits (mean confidence ~0.85, ECE ~0.13).
    metrics = train_in_process(run_dir, ["regularizer=label_smoothing", "trainer.epochs=15",
                                         "evaluation.figures=true"])
    assert metrics["test/ece"] > 0.08
    for calibrator in DEFAULT_CALIBRATORS:
        assert metrics[f"test/ece@{calibrator}"] < metrics["test/ece"], calibrator
        for metric in METRICS:
            assert math.isfinite(metrics[f"test/{metric}@{calibrator}"])
    assert (run_dir / "test_reliability_panel.png").stat().st_size > 0
    group = SimpleNamespace(label="label_smoothing", completed=[SimpleNamespace(metrics=metrics)])
    table = calibration_table_markdown([group])
    assert "label_smoothing" in table and "isotonic" in table


def test_the_config_schema_names_every_calibrator():
    assert {name.value for name in CalibratorName} == set(CALIBRATORS)
