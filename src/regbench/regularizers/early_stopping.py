"""Early stopping: stop when the validation metric stops improving, and keep the best weights.

After every epoch the monitored validation metric is compared with the best so far; an improvement
(by more than ``min_delta``) saves a copy of the weights, ``patience`` epochs in a row without one
stop training. At the end the best weights are restored, so the test metrics are those of the best
epoch (Prechelt 1998, "Early stopping - but when?"; Goodfellow et al. 2016, Algorithm 7.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from regbench.config import check
from regbench.regularizers.base import Regularizer, RunContext, register_regularizer

# Monitored metric -> whether larger is better.
MONITORS = {"val/nll": False, "val/acc": True}


@dataclass
class EarlyStoppingConfig:
    # Epochs without improvement before stopping: scikit-learn's MLPClassifier(early_stopping=True)
    # default n_iter_no_change=10.
    patience: int = 10
    # The validation metric to watch; minimized for val/nll, maximized for val/acc.
    monitor: str = "val/nll"
    # Smallest change that counts as an improvement: Keras' and Lightning's EarlyStopping default 0.
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        check(self.patience >= 1, "regularizer.early_stopping.patience", self.patience,
              "an integer >= 1")
        check(self.monitor in MONITORS, "regularizer.early_stopping.monitor", self.monitor,
              f"one of {', '.join(MONITORS)}")
        check(self.min_delta >= 0, "regularizer.early_stopping.min_delta", self.min_delta,
              "a number >= 0")


def copy_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer (BatchNorm running statistics included)."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@register_regularizer("early_stopping", EarlyStoppingConfig)
class EarlyStopping(Regularizer):
    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        super().__init__(cfg)
        self.maximize = MONITORS[cfg.monitor]
        self.best_value: Optional[float] = None
        self.best_epoch = 0  # 1-based, like the epoch numbers of history.jsonl
        self.bad_epochs = 0
        self.last_epoch = 0
        self.stopped_epoch: Optional[int] = None
        self.best_weights: Optional[dict[str, torch.Tensor]] = None

    def setup(self, context: RunContext) -> None:
        check(context.val_size > 0, "dataset.val_size", context.val_size,
              f"> 0 with regularizer=early_stopping, which monitors {self.cfg.monitor}")

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        if self.maximize:
            return value > self.best_value + self.cfg.min_delta
        return value < self.best_value - self.cfg.min_delta

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        value = float(metrics[self.cfg.monitor])
        self.last_epoch = epoch + 1
        if self.improved(value):
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch + 1, 0
            self.best_weights = copy_weights(model)
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.cfg.patience:
            self.stopped_epoch = epoch + 1
            return True
        return False

    def on_fit_end(self, model: nn.Module) -> dict[str, float]:
        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)
        return {"early_stopping/best_epoch": self.best_epoch,
                "early_stopping/stopped_epoch": self.stopped_epoch or self.last_epoch}

    # Tensors and plain Python only: checkpoints are loaded with weights_only=True.
    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "last_epoch": self.last_epoch,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.last_epoch = state["last_epoch"]
        self.stopped_epoch = state["stopped_epoch"]
        self.best_weights = state["best_weights"]
