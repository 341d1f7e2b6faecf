"""Logit normalization (Wei et al. 2022, "Mitigating Neural Network Overconfidence with Logit
Normalization", ICML).

Training minimizes the cross-entropy of the normalized logits f / (tau * ||f||), so the loss cannot
be lowered by growing the logits' norm, only by their direction. It replaces the cross-entropy
(``owns_base_loss``), logged as train/loss_logit_norm. Evaluation uses the raw logits f, as in the
paper. Soft targets (mixup, CutMix) are used as F.cross_entropy takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from regbench.config import check
from regbench.regularizers.base import Regularizer, StepOutput, register_regularizer

# Added to the norm, as in the authors' code (hongxin001/logitnorm_ood), so zero logits stay finite.
NORM_EPSILON = 1e-7


@dataclass
class LogitNormConfig:
    # Temperature tau; 0.04 is Wei et al. 2022's CIFAR-10 setting (chosen on validation data).
    # Smaller tau: sharper normalized softmax.
    tau: float = 0.04

    def __post_init__(self) -> None:
        check(self.tau > 0, "regularizer.logit_norm.tau", self.tau, "a number > 0")


def normalized_logits(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """f / (tau * (||f||_2 + 1e-7)) per example."""
    return logits / (tau * (logits.norm(p=2, dim=1, keepdim=True) + NORM_EPSILON))


@register_regularizer("logit_norm", LogitNormConfig)
class LogitNorm(Regularizer):
    owns_base_loss = True

    def base_loss(self, step: StepOutput) -> torch.Tensor:
        return F.cross_entropy(normalized_logits(step.logits, self.cfg.tau), step.targets)
