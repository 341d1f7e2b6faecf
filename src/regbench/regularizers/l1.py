"""L1 weight penalty: coef * sum(|w|) added to the loss (drives small weights to exactly zero)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from regbench.config import check
from regbench.regularizers.base import (
    Regularizer,
    StepOutput,
    penalized_parameters,
    register_regularizer,
)


@dataclass
class L1Config:
    # 1e-5: the kernel L1 factor of Keras' "Layer weight regularizers" example
    # (regularizers.l1_l2(l1=1e-5, l2=1e-4)); no paper fixes one for deep image classifiers. On the
    # default 2x1024 MLP the term starts near 0.2, small next to the cross-entropy.
    coef: float = 1e-5
    # Leave biases and normalization parameters (every 1-D parameter) unpenalized, as for l2.
    exclude_bias_and_norm: bool = True

    def __post_init__(self) -> None:
        check(self.coef >= 0, "regularizer.l1.coef", self.coef, "a number >= 0")


def sum_of_absolutes(parameters: list[nn.Parameter]) -> torch.Tensor:
    return torch.stack([p.float().abs().sum() for p in parameters]).sum()


@register_regularizer("l1", L1Config)
class L1(Regularizer):
    def __init__(self, cfg: L1Config) -> None:
        super().__init__(cfg)
        self.penalized: list[nn.Parameter] = []

    def on_model_built(self, model: nn.Module) -> None:
        self.penalized = penalized_parameters(model, self.cfg.exclude_bias_and_norm)

    def loss_terms(self, step: StepOutput) -> dict[str, torch.Tensor]:
        if not self.penalized:
            return {}
        return {"l1": self.cfg.coef * sum_of_absolutes(self.penalized)}
