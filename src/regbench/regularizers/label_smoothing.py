"""Label smoothing (Szegedy et al. 2016, Inception-v3 §7).

The training targets become q'(k) = (1 - epsilon) * 1[k = y] + epsilon / K on every class, the true
one included: exactly what ``F.cross_entropy(..., label_smoothing=epsilon)`` computes. Variants that
spread epsilon over the K - 1 wrong classes only are a different loss.

Soft targets q from mixup/CutMix are smoothed the same way, q' = (1 - epsilon) * q + epsilon / K
(torch does that for probability targets too); it equals timm's mixup_target, which smooths each
one-hot before mixing, since smoothing is linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from regbench.config import check
from regbench.regularizers.base import Regularizer, StepOutput, register_regularizer


@dataclass
class LabelSmoothingConfig:
    # Probability mass moved from the true class to the uniform distribution over all K classes;
    # 0.1 on ImageNet (Szegedy et al. 2016), also Pereyra et al. 2017's MNIST label smoothing.
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        # epsilon = 1 would make the target uniform and independent of the label.
        check(0 <= self.epsilon < 1, "regularizer.label_smoothing.epsilon", self.epsilon,
              "a number in [0, 1)")


@register_regularizer("label_smoothing", LabelSmoothingConfig)
class LabelSmoothing(Regularizer):
    def loss_terms(self, step: StepOutput) -> dict[str, torch.Tensor]:
        # The engine adds plain cross-entropy CE; this term is what turns it into the smoothed loss:
        # smoothed - CE = epsilon * (uniform cross-entropy - CE), where uniform cross-entropy is
        # mean_k of -log p_k. Taking it from torch's own smoothed loss keeps
        # train/loss_ce + train/loss_label_smoothing equal to F.cross_entropy(label_smoothing=eps).
        smoothed = F.cross_entropy(step.logits, step.targets, label_smoothing=self.cfg.epsilon)
        return {"label_smoothing": smoothed - F.cross_entropy(step.logits, step.targets)}
