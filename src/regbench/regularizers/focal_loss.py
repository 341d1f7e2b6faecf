"""Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", ICCV), as a calibration
method (Mukhoti et al. 2020, "Calibrating Deep Neural Networks using Focal Loss", NeurIPS).

FL = -(1 - p_y)^gamma * log p_y, averaged over the batch: cross-entropy with well-classified
examples down-weighted. It replaces the cross-entropy (``owns_base_loss``), logged as
train/loss_focal_loss. Mukhoti et al. fix gamma = 3 (FL-3) or choose it per example from the
predicted probability of the true class (FLSD-53: gamma = 5 when p_y < 0.2, else 3; ``adaptive``).
The gamma choice is not differentiated (a step function), as in their code; the (1 - p)^gamma
factor is, as in Lin et al.

Soft targets q (mixup, CutMix) give -sum_k q_k (1 - p_k)^gamma_k log p_k, which is the formula
above for one-hot q. Not in torchvision (its sigmoid_focal_loss is the binary, per-logit form of
detection), so it is written out here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from regbench.config import check
from regbench.regularizers.base import Regularizer, StepOutput, register_regularizer

PREFIX = "regularizer.focal_loss"
# FLSD-53 (Mukhoti et al. 2020 §5): gamma 5 for p_y in [0, 0.2), gamma 3 for p_y in [0.2, 1].
ADAPTIVE_THRESHOLD = 0.2
ADAPTIVE_LOW_P_GAMMA = 5.0
ADAPTIVE_HIGH_P_GAMMA = 3.0


@dataclass
class FocalLossConfig:
    # Focusing parameter; 3 is Mukhoti et al. 2020's fixed choice (FL-3), picked on CIFAR-10
    # validation data (Lin et al. 2017 use 2 for detection). 0 is plain cross-entropy.
    gamma: float = 3.0
    # true: Mukhoti et al.'s FLSD-53 schedule per example (gamma 5 if p_y < 0.2, else 3), and
    # gamma above is not used.
    adaptive: bool = False

    def __post_init__(self) -> None:
        check(self.gamma >= 0, f"{PREFIX}.gamma", self.gamma, "a number >= 0 (0: cross-entropy)")


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float,
               adaptive: bool = False) -> torch.Tensor:
    """Batch mean of -sum_k q_k (1 - p_k)^gamma_k log p_k for class indices [B] or probabilities
    [B, K] as ``targets``; ``adaptive``: gamma_k from FLSD-53 instead of ``gamma``."""
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    if targets.ndim == 1:
        targets = F.one_hot(targets, logits.shape[1]).to(log_p.dtype)
    if adaptive:
        low = p.detach() < ADAPTIVE_THRESHOLD
        gammas = torch.where(low, ADAPTIVE_LOW_P_GAMMA, ADAPTIVE_HIGH_P_GAMMA).to(log_p.dtype)
        weights = (1 - p).clamp(min=0).pow(gammas)
    else:
        weights = (1 - p).clamp(min=0).pow(gamma)
    return -(targets * weights * log_p).sum(dim=1).mean()


@register_regularizer("focal_loss", FocalLossConfig)
class FocalLoss(Regularizer):
    owns_base_loss = True

    def base_loss(self, step: StepOutput) -> torch.Tensor:
        return focal_loss(step.logits, step.targets, self.cfg.gamma, self.cfg.adaptive)
