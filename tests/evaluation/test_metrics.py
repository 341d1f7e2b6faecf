"""A split's classification metrics and the bootstrap intervals (evaluation/metrics.py) against
hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from regbench.evaluation.calibration_errors import calibration_errors
from regbench.evaluation.metrics import (
    bootstrap_intervals,
    classification_metrics,
    predictive_entropy,
)


def logits_for(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities).log()


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
