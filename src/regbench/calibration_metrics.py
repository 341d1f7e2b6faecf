"""Calibration metrics of probabilities [N, K] and labels [N], and the calibration panel: every metric
on the raw test probabilities and after each post-hoc calibrator fitted on the validation split.

Keys: ``test/<metric>`` raw and ``test/<metric>@<calibrator>`` after a calibrator, plus
``temperature`` (the fitted T). The top-label confidence is the largest probability of a row and the
prediction its argmax (first index on ties, as torch.max). Metrics (README "What a run records"):

- ``ece``: 15 equal-width bins [lo, hi) of the confidence, 1.0 in the last one, sum over bins of
  |B|/N |acc(B) - conf(B)| (Guo et al. 2017); the per-epoch ``ece`` of metrics.py, same bins.
- ``ece_adaptive``: the same sum over 15 equal-mass bins (Nixon et al. 2019): examples sorted by
  confidence (ties: correct ones after incorrect ones, so the result does not depend on the order of
  the examples) and split into min(15, N) consecutive bins whose sizes differ by at most one.
- ``ece_classwise``: mean over the K classes of sum over 15 equal-width bins of p_k of
  |B|/N |freq_k(B) - mean p_k(B)|, freq_k the fraction of B with label k (Kull et al. 2019).
- ``ece_debiased_l2``: sqrt(max(0, sum over the equal-mass bins of |B|/N [(acc(B) - conf(B))^2 -
  acc(B)(1 - acc(B))/(|B| - 1)])), bins with one example counting 0: the plug-in debiased estimator
  of the top-label binned L2 calibration error (Kumar et al. 2019, their ``unbiased_l2_ce``).
- ``smece``: smooth ECE (Blasiok & Nakkiran 2023) of (confidence, correct), see ``smooth_ece``.
- ``nll``: mean -log p_y, p_y clamped at 1e-12 (isotonic can give a class probability 0).
- ``brier``: mean sum_k (p_k - 1[y = k])^2.
- ``aurc``: area under the risk-coverage curve: examples sorted by confidence descending; risk at
  coverage i/N is the error rate of the top i; AURC = mean over i = 1..N of that risk. Tied
  confidences: the expected risk over all orders of the tied examples (within a tie group the
  expected number of errors among the first j of n tied examples with e errors is j e / n).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

from regbench.calibration import Calibrator, fit_calibrator
from regbench.config import EvaluationConfig
from regbench.metrics import CALIBRATION_BINS, calibration_errors, equal_width_bins

BINS = CALIBRATION_BINS
METRICS = ("ece", "ece_adaptive", "ece_classwise", "ece_debiased_l2", "smece", "nll", "brier", "aurc")
# Every ECE convention: the ones ranking flips are looked for between.
ECE_METRICS = ("ece", "ece_adaptive", "ece_classwise", "ece_debiased_l2", "smece")
# All four together cost well under a second on the default job (README "What a run records").
# The default of evaluation.calibrators (config.py), as names.
DEFAULT_CALIBRATORS = tuple(name.value for name in EvaluationConfig().calibrators)
RAW = "raw"
NLL_FLOOR = 1e-12


def top_label(probabilities: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, correct as 0./1.) in float64."""
    confidence, prediction = probabilities.max(dim=1)
    return confidence.double(), (prediction == labels).double()


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    return calibration_errors(probabilities, labels, bins)[0].item()


def equal_mass_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> list[torch.Tensor]:
    """Indices of min(bins, N) bins of consecutive examples by confidence (ties: incorrect first),
    sizes differing by at most one."""
    order = np.lexsort((correct.cpu().numpy(), confidence.cpu().numpy()))
    count = min(bins, len(order))
    return [torch.from_numpy(part).to(confidence.device) for part in np.array_split(order, count)] if count else []


def adaptive_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    confidence, correct = top_label(probabilities, labels)
    total = sum((correct[part] - confidence[part]).sum().abs() for part in equal_mass_bins(confidence, correct, bins))
    return float(total) / len(labels)


def debiased_l2_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    confidence, correct = top_label(probabilities, labels)
    total = 0.0
    for part in equal_mass_bins(confidence, correct, bins):
        size = len(part)
        if size < 2:
            continue
        accuracy, mean_confidence = correct[part].mean().item(), confidence[part].mean().item()
        total += size / len(labels) * ((accuracy - mean_confidence) ** 2
                                       - accuracy * (1 - accuracy) / (size - 1))
    return math.sqrt(max(total, 0.0))


def classwise_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    examples, classes = probabilities.shape
    onehot = torch.nn.functional.one_hot(labels, classes).double()
    index = equal_width_bins(probabilities, bins)  # [N, K]
    # One histogram per class: flat bin index k * bins + b.
    flat = (index + torch.arange(classes, device=index.device) * bins).reshape(-1)
    residual = torch.zeros(classes * bins, dtype=torch.float64, device=index.device)
    residual.index_add_(0, flat, (onehot - probabilities.double()).reshape(-1))
    return (residual.abs().sum() / (examples * classes)).item()


def area_under_risk_coverage(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    confidence, correct = top_label(probabilities, labels)
    confidence, error = confidence.cpu().numpy(), 1 - correct.cpu().numpy()
    examples = len(error)
    order = np.argsort(-confidence, kind="stable")
    confidence, error = confidence[order], error[order]
    # Tie groups of equal confidence: start offset, size and errors of each example's group.
    starts = np.flatnonzero(np.r_[True, confidence[1:] != confidence[:-1]])
    sizes = np.diff(np.r_[starts, examples])
    group_errors = np.add.reduceat(error, starts)
    errors_before = np.cumsum(group_errors) - group_errors
    group = np.repeat(np.arange(len(starts)), sizes)
    covered = np.arange(1, examples + 1)
    expected_errors = errors_before[group] + (covered - starts[group]) * group_errors[group] / sizes[group]
    return float(np.mean(expected_errors / covered))


# Smooth ECE (Blasiok & Nakkiran 2023), the discretization of their package relplot (1.0.3,
# relplot.smECE with its defaults: reflected Gaussian kernel, no logit scaling), re-written here
# because relplot's import pulls in pandas and seaborn for its plots. Checked against relplot.smECE.
SMECE_MESH = 200
SMECE_DENSITY_FLOOR = 1e-4
SMECE_BISECTIONS = 10


def reflected_gaussian_smooth(x: np.ndarray, weights: np.ndarray, at: np.ndarray, sigma: float) -> np.ndarray:
    """sum_i w_i K_sigma(t - x_i) at the points ``at``, K a Gaussian reflected at 0 and 1, computed on
    a grid: weights spread linearly onto the two nearest grid points, convolved, interpolated."""
    points = max(2000, round(20 / sigma)) // 2 + 1
    grid = np.zeros(points)
    position = x * (points - 1)
    cell = position.astype(int).clip(0, points - 2)
    fraction = position - cell
    np.add.at(grid, cell, (1 - fraction) * weights)
    np.add.at(grid, cell + 1, fraction * weights)
    offsets = np.linspace(0, 1, points) - 0.5
    kernel = np.exp(-offsets ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)
    mirrored = np.concatenate([grid[::-1][:-1], grid, grid[::-1][1:]])
    smoothed = np.convolve(mirrored, kernel, "valid")[points // 2: points // 2 + points]
    cell = (at * (points - 1)).astype(int).clip(0, points - 2)
    fraction = at * (points - 1) - cell
    return smoothed[cell] * (1 - fraction) + smoothed[cell + 1] * fraction


def smooth_ece_at(confidence: np.ndarray, correct: np.ndarray, sigma: float) -> float:
    """smECE_sigma: the kernel-smoothed residual r(t) = E[f - y | f ~ t], integrated |r| against the
    smoothed density of f."""
    at = np.linspace(0, 1, max(round(10 / sigma), SMECE_MESH))
    density = reflected_gaussian_smooth(confidence, np.ones_like(confidence), at, sigma) + SMECE_DENSITY_FLOOR
    residual = reflected_gaussian_smooth(confidence, confidence - correct, at, sigma) / density
    return float(np.sum(np.abs(residual) * density) / np.sum(density))


def smooth_ece_of(confidence: np.ndarray, correct: np.ndarray) -> float:
    """smECE: smECE_sigma at the fixed point sigma = smECE_sigma, found by bisection on (0, 1]."""
    def small_enough(sigma: float) -> bool:
        return sigma < 1e-3 or sigma < smooth_ece_at(confidence, correct, sigma)

    if small_enough(1.0):
        return smooth_ece_at(confidence, correct, 1.0)
    high, low = 1.0, 0.0
    for _ in range(SMECE_BISECTIONS):
        middle = (high + low) / 2
        if small_enough(middle):
            low = middle
        else:
            high = middle
    return smooth_ece_at(confidence, correct, high)


def smooth_ece(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    confidence, correct = top_label(probabilities, labels)
    return smooth_ece_of(confidence.cpu().numpy(), correct.cpu().numpy())


def negative_log_likelihood(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    true_class = probabilities.double().gather(1, labels[:, None]).squeeze(1)
    return (-true_class.clamp_min(NLL_FLOOR).log()).mean().item()


def brier_score(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    onehot = torch.nn.functional.one_hot(labels, probabilities.shape[1]).double()
    return (probabilities.double() - onehot).pow(2).sum(dim=1).mean().item()


METRIC_FUNCTIONS = {
    "ece": expected_calibration_error,
    "ece_adaptive": adaptive_calibration_error,
    "ece_classwise": classwise_calibration_error,
    "ece_debiased_l2": debiased_l2_calibration_error,
    "smece": smooth_ece,
    "nll": negative_log_likelihood,
    "brier": brier_score,
    "aurc": area_under_risk_coverage,
}


def calibration_metrics(probabilities: torch.Tensor, labels: torch.Tensor,
                        metrics: Iterable[str] = METRICS) -> dict[str, float]:
    """Every metric of probabilities [N, K] (rows summing to 1) and labels [N], as Python floats."""
    if len(labels) == 0:
        raise ValueError("calibration metrics need at least one example")
    probabilities, labels = probabilities.detach(), labels.detach().long()
    return {name: METRIC_FUNCTIONS[name](probabilities, labels) for name in metrics}


def metric_key(metric: str, calibrator: str = RAW, split: str = "test") -> str:
    """``test/ece`` raw, ``test/ece@temperature`` after a calibrator."""
    return f"{split}/{metric}" if calibrator == RAW else f"{split}/{metric}@{calibrator}"


def calibration_panel(val_logits: torch.Tensor, val_labels: torch.Tensor,
                      test_logits: torch.Tensor, test_labels: torch.Tensor,
                      calibrators: Sequence[str] = DEFAULT_CALIBRATORS,
                      ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Fit each calibrator on the validation logits/labels, apply it to the test logits, and measure.

    Returns (metrics, probabilities): metrics has ``test/<metric>`` for the raw softmax and
    ``test/<metric>@<calibrator>`` for every calibrator and metric, plus the fitted calibrators'
    scalars (``temperature``); probabilities maps "raw" and each calibrator name to the test
    probabilities [N, K] (CPU), for ``figures.reliability_panel``. Matrix scaling on a validation split
    that is too small raises ConfigError. The test labels are used for measuring only.
    """
    test_labels = test_labels.detach().long().cpu()
    probabilities = {RAW: test_logits.detach().double().softmax(dim=1).cpu()}
    metrics: dict[str, float] = {}
    for name in calibrators:
        calibrator: Calibrator = fit_calibrator(name, val_logits, val_labels.long())
        probabilities[name] = calibrator(test_logits).double().cpu()
        metrics.update(calibrator.scalars)
    for name, probs in probabilities.items():
        metrics.update({metric_key(metric, name): value
                        for metric, value in calibration_metrics(probs, test_labels).items()})
    return metrics, probabilities
