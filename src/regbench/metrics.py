"""Classification metrics computed on device from a split's logits and labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def predictive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_k p_k log p_k per example, in nats, computed stably from logits."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scalar tensors (not yet transferred) for one split."""
    logits = logits.float()
    probabilities = logits.softmax(dim=1)
    confidence, prediction = probabilities.max(dim=1)
    return {
        "acc": (prediction == labels).float().mean(),
        "loss": F.cross_entropy(logits, labels),
        "mean_confidence": confidence.mean(),
        "entropy": predictive_entropy(logits).mean(),
    }


def to_floats(metrics: dict[str, torch.Tensor], prefix: str) -> dict[str, float]:
    """One device-to-host transfer for all of a split's metrics."""
    keys = list(metrics)
    values = torch.stack([metrics[key].detach().float() for key in keys]).cpu().tolist()
    return {f"{prefix}/{key}": value for key, value in zip(keys, values)}
