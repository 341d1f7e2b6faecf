"""Classification and calibration metrics of a split, computed on device from its logits and labels.

Calibration follows Guo et al. 2017: the confidence is the max softmax probability, ECE is the
bin-weighted mean |accuracy - confidence| over 15 equal-width bins and MCE the largest bin gap.
They come from torchmetrics' ``multiclass_calibration_error`` (norm "l1" = ECE, "max" = MCE), whose
bins are [lo, hi) with the top bin closed (confidence 1.0 falls in the last bin), while Guo's
reference code uses (lo, hi]; the two differ only for confidences exactly on a bin edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

CALIBRATION_BINS = 15  # Guo et al. 2017


def predictive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_k p_k log p_k per example, in nats, computed stably from logits."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


def brier_score(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over examples of sum_k (p_k - onehot_k)^2 (Brier 1950, multi-class form; range [0, 2])."""
    onehot = F.one_hot(labels, probabilities.shape[1]).to(probabilities.dtype)
    return (probabilities - onehot).pow(2).sum(dim=1).mean()


def calibration_errors(probabilities: torch.Tensor, labels: torch.Tensor,
                       bins: int = CALIBRATION_BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """(ECE, MCE) of the top-label confidence."""
    num_classes = probabilities.shape[1]
    ece = multiclass_calibration_error(probabilities, labels, num_classes, n_bins=bins, norm="l1")
    mce = multiclass_calibration_error(probabilities, labels, num_classes, n_bins=bins, norm="max")
    return ece, mce


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scalar tensors (not yet transferred to the host) for one split."""
    logits = logits.float()
    probabilities = logits.softmax(dim=1)
    confidence, prediction = probabilities.max(dim=1)
    nll = F.cross_entropy(logits, labels)
    ece, mce = calibration_errors(probabilities, labels)
    metrics = {
        "acc": (prediction == labels).float().mean(),
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
