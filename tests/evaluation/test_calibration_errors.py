"""The calibration errors and their bins (evaluation/calibration_errors.py) against hand calculations,
torchmetrics and relplot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from conftest import TINY, TINY_LABELS
from regbench.evaluation.calibration_errors import (
    adaptive_calibration_error,
    area_under_risk_coverage,
    calibration_errors,
    classwise_calibration_error,
    debiased_l2_calibration_error,
    equal_width_bins,
    expected_calibration_error,
    reliability_bins,
    smooth_ece,
    smooth_ece_of,
)
from regbench.evaluation.metrics import brier_score
from regbench.evaluation.panel import (
    METRICS,
    calibration_metrics,
)


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
