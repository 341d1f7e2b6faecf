"""Metrics and temperature scaling against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regbench.evaluation.calibration_errors import (
    calibration_errors,
    equal_width_bins,
    reliability_bins,
)
from regbench.evaluation.calibrators import fit_temperature
from regbench.evaluation.metrics import (
    bootstrap_intervals,
    brier_score,
    classification_metrics,
    predictive_entropy,
)


def logits_for(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities).log()


def test_perfectly_calibrated_predictions_have_zero_ece():
    # Ten predictions at confidence 0.8, eight of them right.
    probabilities = torch.tensor([[0.8, 0.2]] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)
    ece, mce = calibration_errors(probabilities, labels)
    assert ece.item() == pytest.approx(0.0, abs=1e-6)
    assert mce.item() == pytest.approx(0.0, abs=1e-6)
    # Brier: right ones (0.8-1)^2 + 0.2^2 = 0.08, wrong ones 0.8^2 + (0.2-1)^2 = 1.28.
    assert brier_score(probabilities, labels).item() == pytest.approx((8 * 0.08 + 2 * 1.28) / 10)


def test_overconfident_predictions():
    # Confidence 0.95 everywhere, half right: ECE = MCE = 0.45.
    probabilities = torch.tensor([[0.95, 0.05]] * 4)
    labels = torch.tensor([0, 0, 1, 1])
    ece, mce = calibration_errors(probabilities, labels)
    assert ece.item() == pytest.approx(0.45, abs=1e-6)
    assert mce.item() == pytest.approx(0.45, abs=1e-6)


def test_ece_and_mce_weight_bins_by_their_size():
    # Bin of confidence 1.0 (right), bin around 0.9 (wrong), bin around 0.5 (right).
    probabilities = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 0])
    ece, mce = calibration_errors(probabilities, labels)
    assert ece.item() == pytest.approx((0.0 + 0.9 + 0.5) / 3, abs=1e-6)
    assert mce.item() == pytest.approx(0.9, abs=1e-6)


def test_ece_and_mce_match_torchmetrics_on_random_predictions():
    """The [lo, hi) bins are torchmetrics' own; only the import is avoided."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    generator = torch.Generator().manual_seed(0)
    for classes, count in ((2, 7), (10, 500), (100, 3000)):
        probabilities = (3 * torch.randn(count, classes, generator=generator)).softmax(dim=1)
        assert probabilities.max() < 1.0  # see the next test for confidence 1.0
        labels = torch.randint(classes, (count,), generator=generator)
        ece, mce = calibration_errors(probabilities, labels)
        for value, norm in ((ece, "l1"), (mce, "max")):
            expected = multiclass_calibration_error(probabilities, labels, classes, n_bins=15, norm=norm)
            assert value.item() == pytest.approx(expected.item(), abs=1e-6), (classes, norm)


def test_confidence_one_falls_in_the_last_bin():
    """As Guo et al.'s (lo, hi] bins; torchmetrics 1.x gives 1.0 a 16th bin of its own instead."""
    probabilities = torch.tensor([[1.0, 0.0], [0.99, 0.01]])
    labels = torch.tensor([1, 0])  # the first wrong, the second right: one bin, acc 0.5, conf 0.995
    ece, mce = calibration_errors(probabilities, labels)
    assert ece.item() == pytest.approx(0.495, abs=1e-6)
    assert mce.item() == pytest.approx(0.495, abs=1e-6)


def test_entropy_in_nats():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    entropy = predictive_entropy(logits)
    assert entropy[0].item() == pytest.approx(math.log(4))
    assert entropy[1].item() == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([0.7, 0.2, 0.1])
    assert predictive_entropy(p.log()[None])[0].item() == pytest.approx(-(p * p.log()).sum().item())


def test_classification_metrics_by_hand():
    logits = logits_for([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    labels = torch.tensor([0, 2])
    metrics = {k: v.item() for k, v in classification_metrics(logits, labels).items()}
    assert metrics["acc"] == pytest.approx(0.5)
    assert metrics["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2, rel=1e-5)
    assert "loss" not in metrics  # one name per number: nll
    assert metrics["mean_confidence"] == pytest.approx((0.7 + 0.6) / 2)
    assert metrics["mean_true_class_prob"] == pytest.approx((0.7 + 0.3) / 2)
    brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.6**2 + 0.7**2)) / 2
    assert metrics["brier"] == pytest.approx(brier, rel=1e-5)
    assert "acc_top5" not in metrics


def test_top5_only_with_more_than_ten_classes():
    logits = torch.arange(12.0).repeat(3, 1)  # class 11 most likely, then 10, 9, 8, 7
    labels = torch.tensor([7, 6, 11])
    metrics = classification_metrics(logits, labels)
    assert metrics["acc_top5"].item() == pytest.approx(2 / 3)


def test_reliability_bins_match_torchmetrics_ece():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 5, generator=generator) * 3
    labels = torch.randint(0, 5, (500,), generator=generator)
    probabilities = logits.softmax(dim=1)
    confidence, prediction = probabilities.max(dim=1)
    mean_confidence, accuracy, counts = reliability_bins(confidence.numpy(), (prediction == labels).numpy())
    filled = counts > 0
    ece = (counts[filled] / counts.sum() * abs(accuracy[filled] - mean_confidence[filled])).sum()
    assert ece == pytest.approx(calibration_errors(probabilities, labels)[0].item(), abs=1e-5)


def test_reliability_bins_put_bin_edges_where_ece_does():
    # float32 0.2 and 0.4 times 15 round up to 3 and 6; ECE's bins ([lo, hi) with float32 edges)
    # hold them in bins 2 and 5.
    confidence = np.array([0.2, 0.4, 1.0], dtype=np.float32)
    _, _, counts = reliability_bins(confidence, np.array([True, True, True]))
    expected = np.bincount(equal_width_bins(torch.from_numpy(confidence)).numpy(), minlength=15)
    assert counts.tolist() == expected.tolist()
    assert np.nonzero(counts)[0].tolist() == [2, 5, 14]


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


# --- bootstrap of test accuracy and ECE ----------------------------------------------------------

def confident_logits(labels: torch.Tensor, classes: int = 10, margin: float = 50.0) -> torch.Tensor:
    logits = torch.zeros(len(labels), classes)
    logits[torch.arange(len(labels)), labels] = margin
    return logits


def noisy_case(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Overconfident logits that are right about 70 % of the time."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(10, (n,), generator=generator)
    logits = torch.randn(n, 10, generator=generator)
    right = torch.rand(n, generator=generator) < 0.7
    logits[right, labels[right]] += 6.0
    return logits, labels


def test_bootstrap_of_perfect_confident_predictions():
    labels = torch.arange(200) % 10
    intervals = bootstrap_intervals(confident_logits(labels), labels, resamples=200)
    assert intervals["acc_ci_low"] == intervals["acc_ci_high"] == 1.0
    assert intervals["ece_ci_low"] == pytest.approx(0.0, abs=1e-6)
    assert intervals["ece_ci_high"] == pytest.approx(0.0, abs=1e-6)
    assert set(intervals) == {"acc_ci_low", "acc_ci_high", "ece_ci_low", "ece_ci_high"}


def test_bootstrap_is_deterministic_for_a_seed():
    logits, labels = noisy_case(500)
    first = bootstrap_intervals(logits, labels, seed=3)
    assert bootstrap_intervals(logits, labels, seed=3) == first
    assert bootstrap_intervals(logits, labels, seed=4) != first
    assert bootstrap_intervals(logits, labels, seed=3, chunk=7) == first  # chunking: same draws


def test_bootstrap_interval_contains_the_point_estimate():
    logits, labels = noisy_case(2000)
    intervals = bootstrap_intervals(logits, labels)
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    ece = calibration_errors(logits.softmax(dim=1), labels)[0].item()
    assert intervals["acc_ci_low"] < accuracy < intervals["acc_ci_high"]
    assert intervals["ece_ci_low"] < ece < intervals["ece_ci_high"]
    # The normal approximation of a proportion's 95 % interval: ±1.96·sqrt(p(1-p)/n).
    half_width = 1.96 * math.sqrt(accuracy * (1 - accuracy) / 2000)
    assert intervals["acc_ci_high"] - intervals["acc_ci_low"] == pytest.approx(2 * half_width, rel=0.15)


def test_bootstrap_interval_shrinks_with_more_examples():
    small = bootstrap_intervals(*noisy_case(300))
    large = bootstrap_intervals(*noisy_case(10_000))
    for name in ("acc", "ece"):
        assert (large[f"{name}_ci_high"] - large[f"{name}_ci_low"]
                < 0.5 * (small[f"{name}_ci_high"] - small[f"{name}_ci_low"])), name


def test_bootstrap_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="expected logits"):
        bootstrap_intervals(torch.zeros(5, 3), torch.zeros(4, dtype=torch.long))
