"""Out-of-distribution scores and metrics (evaluation/ood.py) against hand calculations, brute
force over every threshold, scipy's Mann-Whitney U and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from sklearn.metrics import average_precision_score, roc_auc_score

from regbench.config import ConfigError
from regbench.evaluation.ood import (
    METRICS,
    SCORES,
    detection_metrics,
    mean_over_sets,
    ood_metrics,
)


def brute_force_fpr95(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Try every threshold t: accept as ID what scores >= t; keep the highest t that accepts at
    least 95 % of ID and report the share of OOD it accepts."""
    for threshold in np.unique(np.concatenate([in_scores, out_scores]))[::-1]:
        if np.mean(in_scores >= threshold) >= 0.95:
            return float(np.mean(out_scores >= threshold))
    raise AssertionError("unreachable: the lowest threshold accepts everything")


def brute_force_average_precision(positive: np.ndarray, negative: np.ndarray) -> float:
    """sum over distinct thresholds t (high to low) of (recall(t) - recall(previous)) *
    precision(t): the step-wise definition, with tied scores entering together."""
    total, previous_recall = 0.0, 0.0
    for threshold in np.unique(np.concatenate([positive, negative]))[::-1]:
        true, false = np.sum(positive >= threshold), np.sum(negative >= threshold)
        recall = true / len(positive)
        total += (recall - previous_recall) * true / (true + false)
        previous_recall = recall
    return total


def test_scores_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    p = math.exp(2) / (math.exp(2) + 2)
    expected = {
        "msp": [p, 1 / 3],
        "maxlogit": [2.0, 0.0],
        "energy": [math.log(math.exp(2) + 2), math.log(3)],
        "entropy": [p * math.log(p) + 2 * (1 - p) / 2 * math.log((1 - p) / 2), -math.log(3)],
    }
    assert set(SCORES) == set(expected)
    for name, values in expected.items():
        assert SCORES[name](logits).tolist() == pytest.approx(values, rel=1e-6), name


def test_every_score_is_higher_for_the_confident_prediction():
    confident, unsure = torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.9, 0.8]])
    for name, score in SCORES.items():
        assert score(confident).item() > score(unsure).item(), name


def test_max_softmax_probability_keeps_margins_apart_that_float32_ties():
    logits = torch.tensor([[20.0, 0.0], [25.0, 0.0]])
    assert torch.softmax(logits, dim=1).amax(dim=1).unique().numel() == 1  # both 1.0 in float32
    msp = SCORES["msp"](logits)
    assert msp[1] > msp[0]


def test_metrics_by_hand():
    # ID scores 4, 3, 1; OOD scores 2, 0. Pairs (ID above OOD): 4>2, 4>0, 3>2, 3>0, 1>0: 5 of 6.
    # ID positive, ranked 4 3 2 1 0 -> hits at ranks 1, 2, 4: AP = (1/1 + 2/2 + 3/4) / 3.
    # OOD positive (negated scores) ranked 0 1 2 3 4 -> hits at ranks 1, 3: AP = (1 + 2/3) / 2.
    # TPR >= 0.95 needs all three ID inputs (threshold 1), which accepts the OOD 2: FPR 1/2.
    metrics = detection_metrics(torch.tensor([4.0, 3.0, 1.0]), torch.tensor([2.0, 0.0]))
    assert metrics["auroc"] == pytest.approx(5 / 6)
    assert metrics["aupr_in"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert metrics["aupr_out"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics["fpr95"] == pytest.approx(1 / 2)


def test_fpr95_takes_the_first_point_reaching_the_level_on_a_straight_roc_segment():
    # 20 ID, 20 OOD. Threshold by threshold the ROC curve goes (0, 0.9), (0.05, 0.95), (0.1, 1.0):
    # three collinear points, the middle of which roc_curve drops by default. Reading FPR95 off
    # the thinned curve would give 0.1 instead of 0.05.
    in_scores = torch.tensor([10.0] * 18 + [5.0, 4.0])
    out_scores = torch.tensor([5.0, 4.0] + [0.0] * 18)
    assert detection_metrics(in_scores, out_scores)["fpr95"] == pytest.approx(0.05)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_brute_force_scipy_and_scikit_learn_on_random_scores_with_ties(seed):
    rng = np.random.default_rng(seed)
    # Rounded to a coarse grid, so many scores tie, within and across the two sets.
    in_scores = np.round(rng.normal(1.0, 1.0, 200 + 37 * seed), 1)
    out_scores = np.round(rng.normal(0.0, 1.0, 150), 1)
    metrics = detection_metrics(torch.from_numpy(in_scores), torch.from_numpy(out_scores))
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    scores = np.r_[in_scores, out_scores]
    u_statistic = mannwhitneyu(in_scores, out_scores).statistic
    assert metrics["auroc"] == pytest.approx(u_statistic / (len(in_scores) * len(out_scores)))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert metrics["aupr_in"] == pytest.approx(average_precision_score(labels, scores))
    assert metrics["aupr_in"] == pytest.approx(brute_force_average_precision(in_scores, out_scores))
    assert metrics["aupr_out"] == pytest.approx(average_precision_score(1 - labels, -scores))
    assert metrics["aupr_out"] == pytest.approx(
        brute_force_average_precision(-out_scores, -in_scores))
    assert metrics["fpr95"] == pytest.approx(brute_force_fpr95(in_scores, out_scores))


def test_separable_sets_give_perfect_metrics_and_swapped_sets_the_worst():
    high, low = torch.arange(10.0, 20.0), torch.arange(0.0, 10.0)
    assert detection_metrics(high, low) == pytest.approx(
        {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0})
    swapped = detection_metrics(low, high)
    assert swapped["auroc"] == 0.0 and swapped["fpr95"] == 1.0


def test_a_diverged_model_gives_nan_metrics_not_an_error():
    metrics = detection_metrics(torch.tensor([1.0, math.nan]), torch.tensor([0.0]))
    assert set(metrics) == set(METRICS) and all(math.isnan(value) for value in metrics.values())


def test_ood_metrics_keys_and_values():
    generator = torch.Generator().manual_seed(0)
    in_logits = torch.randn(300, 10, generator=generator)
    in_logits[:, 0] += 4.0  # confident in-distribution predictions
    out_logits = torch.randn(200, 10, generator=generator)
    metrics = ood_metrics(in_logits, out_logits, "gaussian")
    assert set(metrics) == {f"ood/gaussian/{metric}_{score}" for metric in METRICS
                            for score in ("msp", "maxlogit", "energy", "entropy")}
    in_energy = torch.logsumexp(in_logits.double(), dim=1).numpy()
    out_energy = torch.logsumexp(out_logits.double(), dim=1).numpy()
    labels = np.r_[np.ones(300), np.zeros(200)]
    assert metrics["ood/gaussian/auroc_energy"] == pytest.approx(
        roc_auc_score(labels, np.r_[in_energy, out_energy]))
    assert metrics["ood/gaussian/fpr95_energy"] == pytest.approx(
        brute_force_fpr95(in_energy, out_energy))
    assert all(metrics[f"ood/gaussian/auroc_{score}"] > 0.9 for score in SCORES)


def test_mean_over_sets_is_the_unweighted_mean_of_auroc_and_fpr95():
    metrics = {f"ood/{name}/{metric}_{score}": value + (0.5 if metric == "fpr95" else 0.0)
               for name, value in (("a", 0.2), ("b", 0.6)) for metric in METRICS
               for score in SCORES}
    means = mean_over_sets(metrics, ["a", "b"])
    assert set(means) == {f"ood/{metric}_{score}" for metric in ("auroc", "fpr95")
                          for score in SCORES}
    assert means["ood/auroc_msp"] == pytest.approx(0.4)
    assert means["ood/fpr95_entropy"] == pytest.approx(0.9)
    assert mean_over_sets(metrics, ["b"])["ood/auroc_energy"] == pytest.approx(0.6)
    assert mean_over_sets(metrics, []) == {}


@pytest.mark.parametrize("name", ["", "folder:/data/textures"])
def test_a_set_name_that_cannot_be_one_key_level_is_refused_in_one_line(name):
    with pytest.raises(ConfigError) as error:
        ood_metrics(torch.zeros(2, 3), torch.zeros(2, 3), name)
    message = str(error.value)
    assert "\n" not in message and f"evaluation.ood={name!r}" in message and "'/'" in message


def test_logits_of_different_classes_are_refused():
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(2, 5\)"):
        ood_metrics(torch.zeros(4, 3), torch.zeros(2, 5), "svhn")
