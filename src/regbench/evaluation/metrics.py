"""The classification metrics of a split, computed on device from its logits and labels (accuracy,
NLL, Brier, ECE/MCE, confidence, entropy), and the bootstrap intervals of its accuracy and ECE (how
much the test split's sampling alone moves them). The calibration errors and their bins are
calibration_errors.py's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from regbench.evaluation import LEVEL
from regbench.evaluation.calibration_errors import (
    CALIBRATION_BINS,
    calibration_errors,
    equal_width_bins,
    top_label,
)


def predictive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_k p_k log p_k per example, in nats, computed stably from logits."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


def brier_score(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over examples of sum_k (p_k - onehot_k)^2 (Brier 1950, multi-class form; range [0, 2]), in
    the probabilities' dtype (the calibration panel passes float64)."""
    onehot = F.one_hot(labels, probabilities.shape[1]).to(probabilities.dtype)
    return (probabilities - onehot).pow(2).sum(dim=1).mean()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scalar tensors (not yet transferred to the host) for one split."""
    logits = logits.float()
    probabilities = logits.softmax(dim=1)
    confidence, correct = top_label(probabilities, labels)
    nll = F.cross_entropy(logits, labels)
    ece, mce = calibration_errors(probabilities, labels)
    metrics = {
        "acc": correct.float().mean(),
        "nll": nll,
        "brier": brier_score(probabilities, labels),
        "ece": ece,
        "mce": mce,
        "mean_confidence": confidence.mean(),
        "entropy": predictive_entropy(logits).mean(),
        "mean_true_class_prob": probabilities.gather(1, labels[:, None]).mean(),
    }
    if probabilities.shape[1] > 10:
        top5 = logits.topk(5, dim=1).indices
        metrics["acc_top5"] = (top5 == labels[:, None]).any(dim=1).float().mean()
    return metrics


def to_floats(metrics: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
    """One device-to-host transfer for all of a split's metrics."""
    keys = list(metrics)
    values = torch.stack([metrics[key].detach().float() for key in keys]).cpu().tolist()
    return {f"{prefix}/{key}": value for key, value in zip(keys, values)}


def bootstrap_intervals(logits: torch.Tensor, labels: torch.Tensor, resamples: int = 1000,
                        seed: int = 0, level: float = LEVEL, bins: int = CALIBRATION_BINS,
                        chunk: int = 100) -> dict[str, float]:
    """Percentile-bootstrap intervals of test accuracy and ECE: resample the test examples with
    replacement ``resamples`` times and take the (1-level)/2 and (1+level)/2 quantiles.

    Vectorized on the logits' device: resample indices come from a ``torch.Generator`` with a
    fixed seed (same inputs, same interval), ``chunk`` resamples at a time to bound memory (the
    draws do not depend on it). ECE uses the bins of ``calibration_errors``. Per resample,
    ECE = Σ_b |B_b|/n · |acc_b − conf_b| = (1/n) · Σ_b |Σ_{i∈b} (correct_i − conf_i)|, so one
    weighted ``bincount`` over (resample, bin) keys gives all resamples' ECE at once.

    ECE is biased upward on finite samples, so for a well-calibrated model the interval can lie
    above the point estimate; it still shows how much the test split alone moves the number.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(f"expected logits (n, classes) and labels (n,), n > 0; got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    device = logits.device
    probabilities = torch.softmax(logits.detach().float(), dim=1)
    confidence, correct = top_label(probabilities, labels.to(device))
    correct = correct.float()
    example_bin = equal_width_bins(confidence, bins)
    gap = correct - confidence  # per example: what its bin's |Σ correct − Σ conf| adds up

    n = len(labels)
    generator = torch.Generator(device=device).manual_seed(seed)
    accuracy, ece = [], []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        index = torch.randint(n, (size, n), generator=generator, device=device)
        accuracy.append(correct[index].mean(dim=1))
        keys = (torch.arange(size, device=device)[:, None] * bins + example_bin[index]).flatten()
        per_bin = torch.bincount(keys, weights=gap[index].flatten(), minlength=size * bins)
        ece.append(per_bin.view(size, bins).abs().sum(dim=1) / n)
    quantiles = torch.tensor([(1 - level) / 2, (1 + level) / 2], device=device)
    acc_low, acc_high = torch.quantile(torch.cat(accuracy), quantiles).tolist()
    ece_low, ece_high = torch.quantile(torch.cat(ece), quantiles).tolist()
    return {"acc_ci_low": acc_low, "acc_ci_high": acc_high,
            "ece_ci_low": ece_low, "ece_ci_high": ece_high}
