"""Confidence penalty (Pereyra et al. 2017, arXiv 1701.06548 §3).

Penalizes low-entropy (over-confident) predictions: loss = CE - beta * H(p(y|x)), with H the
entropy of the softmax in nats, averaged over the batch. The hinge variant penalizes only entropy
below a threshold Gamma: loss = CE + beta * max(0, Gamma - H). (The paper prints the hinge with a
minus sign, which would reward entropy below Gamma; the plus sign is the one that pushes the entropy
up, like the plain penalty.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from regbench.config import ConfigError, check
from regbench.evaluation.metrics import predictive_entropy
from regbench.regularizers.base import (
    Regularizer,
    RunContext,
    StepOutput,
    register_regularizer,
)

PREFIX = "regularizer.confidence_penalty"


@dataclass
class ConfidencePenaltyConfig:
    # Weight of the entropy term; 1.0 was best for the 2x1024 MLP on permutation-invariant MNIST
    # (Pereyra et al. 2017 Table 1, grid {0.1, 0.3, 0.5, 1, 2, 4, 8}); 0.1 for DenseNet on CIFAR-10.
    beta: float = 1.0
    # Hinge threshold Gamma in nats: penalize only beta * max(0, Gamma - H) (Pereyra et al. 2017
    # §3). null: off, the plain penalty -beta * H.
    threshold: Optional[float] = None
    # Linear warmup of beta from 0 at the first step to its full value after this many epochs
    # (fractions allowed); 0: off, full beta from the first step.
    anneal_epochs: float = 0.0

    def __post_init__(self) -> None:
        check(self.beta >= 0, f"{PREFIX}.beta", self.beta, "a number >= 0")
        # The entropy is never negative, so a threshold <= 0 would never penalize anything.
        check(self.threshold is None or self.threshold > 0, f"{PREFIX}.threshold", self.threshold,
              "null (no hinge) or a number of nats > 0")
        check(self.anneal_epochs >= 0, f"{PREFIX}.anneal_epochs", self.anneal_epochs,
              "a number of epochs >= 0 (0: no annealing)")


@register_regularizer("confidence_penalty", ConfidencePenaltyConfig)
class ConfidencePenalty(Regularizer):
    def __init__(self, cfg: ConfidencePenaltyConfig) -> None:
        super().__init__(cfg)
        self.epochs = 1  # the run's length, from setup()

    def setup(self, context: RunContext) -> None:
        self.epochs = context.epochs
        if self.cfg.anneal_epochs > context.epochs:
            raise ConfigError(f"{PREFIX}.anneal_epochs={self.cfg.anneal_epochs!r} is not allowed: "
                              f"at most trainer.epochs={context.epochs}, or beta never reaches "
                              f"its value")
        max_entropy = math.log(context.num_classes)
        if self.cfg.threshold is not None and self.cfg.threshold > max_entropy:
            # H <= log K, so a larger threshold keeps the hinge always on: the plain penalty.
            raise ConfigError(f"{PREFIX}.threshold={self.cfg.threshold!r} is not allowed: at most "
                              f"log(num_classes) = {max_entropy:.4g} nats for "
                              f"{context.num_classes} classes")

    def beta_at(self, progress: float) -> float:
        """beta after ``progress`` (fraction of the run done): linear from 0 at progress 0 to the
        full beta once progress * epochs reaches anneal_epochs, constant afterwards."""
        if self.cfg.anneal_epochs == 0:
            return self.cfg.beta
        epochs_done = progress * self.epochs
        return self.cfg.beta * min(1.0, epochs_done / self.cfg.anneal_epochs)

    def loss_terms(self, step: StepOutput) -> dict[str, torch.Tensor]:
        entropy = predictive_entropy(step.logits)  # per example, nats, from a stable log_softmax
        if self.cfg.threshold is None:
            penalty = -entropy.mean()
        else:
            penalty = (self.cfg.threshold - entropy).clamp(min=0).mean()
        return {"confidence_penalty": self.beta_at(step.progress) * penalty}
