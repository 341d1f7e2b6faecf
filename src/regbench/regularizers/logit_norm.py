"""Logit normalization (Wei et al. 2022, "Mitigating Neural Network Overconfidence with Logit
Normalization", ICML).

Training minimizes the cross-entropy of the normalized logits f / (tau * ||f||), so the loss cannot
be lowered by growing the logits' norm, only by their direction. It replaces the cross-entropy
(``owns_base_loss``), logged as train/loss_logit_norm. Evaluation uses the raw logits f, as in the
paper. Soft targets (mixup, CutMix) are used as F.cross_entropy takes them.

The norm has a floor, 1/tau by default: logits longer than 1/tau are normalized as in the paper,
shorter ones are left as they are. Dividing by tau * ||f|| multiplies the cross-entropy's gradient
by about 1/(tau * ||f||), and PyTorch's default initialization gives regbench's models logits of norm
0.2-1.3 (tau = 0.04: the digits MLP's first gradient is 160 times the cross-entropy's). The paper's
WRN absorbs that (BatchNorm after every convolution, weight decay 5e-4, 200 epochs); the MLP, LeNet
and the convnet trained with SGD never recover (digits, 5-10 epochs: test accuracy 0.10-0.36).
With the floor the normalization only ever shrinks the logits, onto the sphere of radius 1/tau, so
the gradient never exceeds the cross-entropy's: Wei et al. 2023's logit clipping ("Mitigating
Memorization of Noisy Labels by Clipping the Model Prediction", ICML, clip at 1/tau).
``norm_floor=0`` is the paper's loss exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from regbench.config import check
from regbench.regularizers.base import Regularizer, StepOutput, register_regularizer

PREFIX = "regularizer.logit_norm"
# Added to the norm, as in the authors' code (hongxin001/logitnorm_ood), so zero logits stay finite.
NORM_EPSILON = 1e-7


@dataclass
class LogitNormConfig:
    # Temperature tau; 0.04 is Wei et al. 2022's CIFAR-10 setting (chosen on validation data).
    # Smaller tau: sharper normalized softmax.
    tau: float = 0.04
    # The smallest norm the logits are divided by. null: 1/tau, the radius of the normalized
    # logits, so they are only ever shrunk and the gradient never exceeds the cross-entropy's
    # (module docstring; Wei et al. 2023's logit clipping); 0: Wei et al. 2022's loss exactly.
    norm_floor: Optional[float] = None

    def __post_init__(self) -> None:
        check(self.tau > 0, f"{PREFIX}.tau", self.tau, "a number > 0")
        if self.norm_floor is not None:
            check(self.norm_floor >= 0, f"{PREFIX}.norm_floor", self.norm_floor,
                  "a number >= 0 (0: the paper's loss exactly), or null for 1/tau")

    @property
    def floor(self) -> float:
        return 1.0 / self.tau if self.norm_floor is None else self.norm_floor


def normalized_logits(logits: torch.Tensor, tau: float, norm_floor: float = 0.0) -> torch.Tensor:
    """f / (tau * (max(||f||_2, norm_floor) + 1e-7)) per example."""
    norms = logits.norm(p=2, dim=1, keepdim=True).clamp_min(norm_floor) + NORM_EPSILON
    return logits / (tau * norms)


@register_regularizer("logit_norm", LogitNormConfig)
class LogitNorm(Regularizer):
    owns_base_loss = True

    def base_loss(self, step: StepOutput) -> torch.Tensor:
        logits = normalized_logits(step.logits, self.cfg.tau, self.cfg.floor)
        return F.cross_entropy(logits, step.targets)
