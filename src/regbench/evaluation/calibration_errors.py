"""The calibration errors of probabilities [N, K] and labels [N], each defined once, and the bins they
are computed in (also the bins of the reliability diagrams and of test_calibration.json).

The top-label confidence is the largest probability of a row and the prediction its argmax (first
index on ties, as torch.max): ``top_label``. The errors (README "What a run records"):

- ``ece`` / MCE: 15 equal-width bins [lo, hi) of the confidence, 1.0 in the last one; ECE is the sum
  over bins of |B|/N |acc(B) - conf(B)|, MCE the largest bin gap (Guo et al. 2017). The bins are
  torchmetrics' ``multiclass_calibration_error`` bins (tests check both values against it) with the
  top bin closed: confidence 1.0, common in float32 for a confident model, falls in the last bin as
  in Guo's (lo, hi] bins, where torchmetrics 1.x gives it a 16th bin of its own. Computed here, not
  imported: ``import torchmetrics`` imports its image and audio metrics (torchvision,
  torch._dynamo, scipy.signal) into every run's start-up (DEVELOPERS.md, Start-up).
- ``ece_adaptive``: the same sum over 15 equal-mass bins (Nixon et al. 2019): examples sorted by
  confidence (ties: correct ones after incorrect ones, so the result does not depend on the order of
  the examples) and split into min(15, N) consecutive bins whose sizes differ by at most one.
- ``ece_classwise``: mean over the K classes of sum over 15 equal-width bins of p_k of
  |B|/N |freq_k(B) - mean p_k(B)|, freq_k the fraction of B with label k (Kull et al. 2019).
- ``ece_debiased_l2``: sqrt(max(0, sum over the equal-mass bins of |B|/N [(acc(B) - conf(B))^2 -
  acc(B)(1 - acc(B))/(|B| - 1)])), bins with one example counting 0: the plug-in debiased estimator
  of the top-label binned L2 calibration error (Kumar et al. 2019, their ``unbiased_l2_ce``).
- ``smece``: smooth ECE (Blasiok & Nakkiran 2023) of (confidence, correct), see ``smooth_ece``.
- ``aurc``: area under the risk-coverage curve: examples sorted by confidence descending; risk at
  coverage i/N is the error rate of the top i; AURC = mean over i = 1..N of that risk. Tied
  confidences: the expected risk over all orders of the tied examples (within a tie group the
  expected number of errors among the first j of n tied examples with e errors is j e / n).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

CALIBRATION_BINS = 15  # Guo et al. 2017
# Confidence histograms use bins half as wide as the calibration bins.
CONFIDENCE_HISTOGRAM_EDGES = np.linspace(0, 1, 2 * CALIBRATION_BINS + 1)


def top_label(probabilities: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, correct): the largest probability of each row and whether its argmax (the first
    index on ties, as torch.max) is the label, as a bool tensor."""
    confidence, prediction = probabilities.max(dim=1)
    return confidence, prediction == labels


def top_label_float64(probabilities: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``top_label`` in float64 (correct as 0./1.), for the estimators below."""
    confidence, correct = top_label(probabilities, labels)
    return confidence.double(), correct.double()


def equal_width_bins(values: torch.Tensor, bins: int = CALIBRATION_BINS) -> torch.Tensor:
    """Bin index in [0, bins) of values in [0, 1]: [lo, hi) bins, 1.0 in the last one; the edges and
    the comparison are torchmetrics' (linspace edges in the values' dtype, bucketize), the clamp is
    not."""
    edges = torch.linspace(0, 1, bins + 1, dtype=values.dtype, device=values.device)
    return (torch.bucketize(values, edges, right=True) - 1).clamp(0, bins - 1)


def calibration_errors(probabilities: torch.Tensor, labels: torch.Tensor,
                       bins: int = CALIBRATION_BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """(ECE, MCE) of the top-label confidence, as tensors on the probabilities' device (float64,
    float32 on Apple's MPS, which has no float64)."""
    dtype = torch.float32 if probabilities.device.type == "mps" else torch.float64
    confidence, correct = top_label(probabilities, labels)
    correct = correct.to(dtype)
    index = equal_width_bins(confidence, bins)
    # Per bin: sum of (correct - confidence) = |B| (acc(B) - conf(B)), and |B|.
    residual = torch.zeros(bins, dtype=dtype, device=index.device)
    residual.index_add_(0, index, correct - confidence.to(dtype))
    counts = torch.bincount(index, minlength=bins)
    ece = residual.abs().sum() / len(index)
    mce = (residual.abs() / counts.clamp(min=1)).max()  # empty bins: residual 0, so gap 0
    return ece, mce


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor,
                               bins: int = CALIBRATION_BINS) -> float:
    return calibration_errors(probabilities, labels, bins)[0].item()


def equal_mass_bins(confidence: torch.Tensor, correct: torch.Tensor,
                    bins: int = CALIBRATION_BINS) -> list[torch.Tensor]:
    """Indices of min(bins, N) bins of consecutive examples by confidence (ties: incorrect first),
    sizes differing by at most one."""
    order = np.lexsort((correct.cpu().numpy(), confidence.cpu().numpy()))
    count = min(bins, len(order))
    return [torch.from_numpy(part).to(confidence.device) for part in np.array_split(order, count)] if count else []


def adaptive_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor,
                               bins: int = CALIBRATION_BINS) -> float:
    confidence, correct = top_label_float64(probabilities, labels)
    total = sum((correct[part] - confidence[part]).sum().abs() for part in equal_mass_bins(confidence, correct, bins))
    return float(total) / len(labels)


def debiased_l2_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor,
                                  bins: int = CALIBRATION_BINS) -> float:
    confidence, correct = top_label_float64(probabilities, labels)
    total = 0.0
    for part in equal_mass_bins(confidence, correct, bins):
        size = len(part)
        if size < 2:
            continue
        accuracy, mean_confidence = correct[part].mean().item(), confidence[part].mean().item()
        total += size / len(labels) * ((accuracy - mean_confidence) ** 2
                                       - accuracy * (1 - accuracy) / (size - 1))
    return math.sqrt(max(total, 0.0))


def classwise_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor,
                                bins: int = CALIBRATION_BINS) -> float:
    examples, classes = probabilities.shape
    onehot = torch.nn.functional.one_hot(labels, classes).double()
    index = equal_width_bins(probabilities, bins)  # [N, K]
    # One histogram per class: flat bin index k * bins + b.
    flat = (index + torch.arange(classes, device=index.device) * bins).reshape(-1)
    residual = torch.zeros(classes * bins, dtype=torch.float64, device=index.device)
    residual.index_add_(0, flat, (onehot - probabilities.double()).reshape(-1))
    return (residual.abs().sum() / (examples * classes)).item()


def area_under_risk_coverage(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    confidence, correct = top_label_float64(probabilities, labels)
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
    confidence, correct = top_label_float64(probabilities, labels)
    return smooth_ece_of(confidence.cpu().numpy(), correct.cpu().numpy())


# --- reliability bins: drawn by figures.py, written to test_calibration.json by the recorder ---------

def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS):
    """Per equal-width bin: (mean confidence, accuracy, count), in the bins ECE is computed in
    (``equal_width_bins``), so a diagram and its ECE agree on confidences at a bin edge too."""
    index = equal_width_bins(torch.from_numpy(np.asarray(confidence)), bins).numpy()
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct.astype(float), minlength=bins) / counts
    return mean_confidence, accuracy, counts


def split_confidence(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``top_label`` of the softmax of ``logits``, as numpy arrays (for the bins and figures)."""
    confidence, correct = top_label(logits.float().softmax(dim=1), labels)
    return confidence.cpu().numpy(), correct.cpu().numpy()


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Reliability bins and confidence histograms as numbers, so a report can overlay runs."""
    confidence, correct = split_confidence(logits, labels)
    mean_confidence, accuracy, counts = reliability_bins(confidence, correct)
    histogram = {
        name: np.histogram(confidence[mask], bins=CONFIDENCE_HISTOGRAM_EDGES)[0].tolist()
        for name, mask in (("correct", correct), ("incorrect", ~correct))
    }
    return {
        "bin_edges": np.linspace(0, 1, len(counts) + 1).tolist(),
        "bin_confidence": [None if c == 0 else float(v) for v, c in zip(mean_confidence, counts)],
        "bin_accuracy": [None if c == 0 else float(v) for v, c in zip(accuracy, counts)],
        "bin_count": counts.tolist(),
        "histogram_edges": CONFIDENCE_HISTOGRAM_EDGES.tolist(),
        "histogram_correct": histogram["correct"],
        "histogram_incorrect": histogram["incorrect"],
    }
