"""L2 weight penalty: coef/2 * sum(w^2) in the loss, or decoupled weight decay with AdamW.

``decoupled=false`` adds the penalty to the loss; its gradient coef * w is exactly what SGD's and
Adam's ``weight_decay=coef`` add to the gradient. ``decoupled=true`` instead gives the penalized
parameters an optimizer group with ``weight_decay=coef``, which only AdamW applies apart from the
gradient (Loshchilov & Hutter 2019); with SGD or Adam it would be the coupled penalty again under
another name, so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regbench.config import check
from regbench.regularizers.base import (
    Regularizer,
    RunContext,
    StepOutput,
    is_penalized,
    penalized_parameters,
    register_regularizer,
)


@dataclass
class L2Config:
    # 1e-4: the weight decay of He et al. 2016 (ResNet, CIFAR-10 §4.2 and ImageNet) and the default
    # of torchvision's classification reference (--wd 1e-4). With decoupled=true it is AdamW's
    # weight_decay, which is multiplied by the learning rate (torch's AdamW default is 1e-2).
    coef: float = 1e-4
    # false: add coef/2 * sum(w^2) to the loss; true: decoupled weight decay (optimizer=adamw only).
    decoupled: bool = False
    # Leave biases and normalization parameters (every 1-D parameter) unpenalized, as timm
    # (param_groups_weight_decay) and torchvision's references (--norm-weight-decay) do.
    exclude_bias_and_norm: bool = True

    def __post_init__(self) -> None:
        check(self.coef >= 0, "regularizer.l2.coef", self.coef, "a number >= 0")


def sum_of_squares(parameters: list[nn.Parameter]) -> torch.Tensor:
    return torch.stack([p.float().pow(2).sum() for p in parameters]).sum()


@register_regularizer("l2", L2Config)
class L2(Regularizer):
    def __init__(self, cfg: L2Config) -> None:
        super().__init__(cfg)
        self.penalized: list[nn.Parameter] = []

    def setup(self, context: RunContext) -> None:
        check(not self.cfg.decoupled or context.optimizer == "adamw", "regularizer.l2.decoupled",
              self.cfg.decoupled, f"only with optimizer=adamw (torch's {context.optimizer} adds "
              f"weight_decay to the gradient: that is decoupled=false)")

    def on_model_built(self, model: nn.Module) -> None:
        self.penalized = penalized_parameters(model, self.cfg.exclude_bias_and_norm)

    def param_group_options(self, name: str, parameter: nn.Parameter) -> dict[str, Any]:
        if self.cfg.decoupled and is_penalized(name, parameter, self.cfg.exclude_bias_and_norm):
            return {"weight_decay": self.cfg.coef}
        return {}

    def loss_terms(self, step: StepOutput) -> dict[str, torch.Tensor]:
        if self.cfg.decoupled or not self.penalized:
            return {}
        return {"l2": 0.5 * self.cfg.coef * sum_of_squares(self.penalized)}
