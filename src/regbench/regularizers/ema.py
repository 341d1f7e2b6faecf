"""Model EMA: Polyak averaging of the weights, as timm's ``ModelEmaV3`` keeps it.

After every optimizer step the average moves toward the trained weights,
ema <- decay_t * ema + (1 - decay_t) * w, starting from a copy of the weights after the first step.
With the warm-up decay_t = min(decay, 1 - (1 + t / gamma)^-power) after t earlier updates (timm's
``get_decay``; with power 1 the average is the plain mean of every step's weights), the average
spans about (1 + t)^power steps at step t; without it decay_t = decay throughout.
Validation and the test phase measure the average (the engine swaps it in, regularizers/base.py),
and the trained weights under ``val_raw/`` and ``test_raw/`` unless ``evaluate_raw`` is false.

The average is torch.optim.swa_utils' ``AveragedModel`` with its EMA update
(``get_ema_multi_avg_fn``), called with the step's warm-up decay. Buffers (BatchNorm's running
statistics) are copied from the trained model at every update rather than averaged, as the issue
asks (#25): ``AveragedModel(use_buffers=False)``, timm's ``exclude_buffers=True``.

On small data the warm-up decides everything: 0.9998 (a 1 / (1 - 0.9998) = 5,000-step window) is
reached only after 0.0002^(-1/power) - 1 = 85,498 steps (power 3/4), while a 30-epoch digits run
takes 570; without the warm-up the average would still hold 0.9998^569 = 89 % of the first step's
weights at the end (the run warns about that). The run logs the decay it will reach and the decay
after its first and last epochs, and records ``ema/decay`` (the last update's) in metrics.json.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from regbench.config import check
from regbench.regularizers.base import Regularizer, RunContext, register_regularizer

log = logging.getLogger(__name__)


@dataclass
class EmaConfig:
    # The decay once the warm-up has reached it: timm train.py's --model-ema-decay default 0.9998.
    decay: float = 0.9998
    # timm train.py's --model-ema-warmup (ModelEmaV3 use_warmup), on: see the module docstring for
    # why a short run needs it.
    warmup: bool = True
    # The warm-up 1 - (1 + t / gamma)^-power: gamma 1 and power 3/4, "for models you plan to train
    # for less" than the million steps power 2/3 suits (crowsonkb's notes in timm ModelEmaV3's
    # docstring; timm's default is 2/3). A 30-epoch digits run is 570 steps.
    warmup_power: float = 0.75
    warmup_gamma: float = 1.0
    # Also measure the trained weights (val_raw/, test_raw/) beside the average.
    evaluate_raw: bool = True

    def __post_init__(self) -> None:
        check(0 <= self.decay < 1, "regularizer.ema.decay", self.decay,
              "a number in [0, 1) (1 would keep the first step's weights for good)")
        check(self.warmup_power > 0, "regularizer.ema.warmup_power", self.warmup_power,
              "a number > 0 (1: the plain mean of every step's weights)")
        check(self.warmup_gamma > 0, "regularizer.ema.warmup_gamma", self.warmup_gamma,
              "a number > 0")


def warmup_decay(cfg: EmaConfig, updates: Any) -> Any:
    """min(decay, 1 - (1 + t / gamma)^-power) for ``updates`` t >= 1 (an int or a numpy array)."""
    return np.minimum(cfg.decay, 1 - (1 + updates / cfg.warmup_gamma) ** -cfg.warmup_power)


def ema_decay(cfg: EmaConfig, updates: int) -> float:
    """The decay of the update that follows ``updates`` earlier ones (timm ModelEmaV3.get_decay
    with update_after_step 0 and min_decay 0); the first update (0) copies the weights."""
    if updates <= 0:
        return 0.0
    return float(warmup_decay(cfg, updates)) if cfg.warmup else cfg.decay


def first_step_share(cfg: EmaConfig, updates: int) -> float:
    """The weight the first step's weights keep in the average after ``updates`` updates: the
    product of every later update's decay."""
    later = np.arange(1, max(updates, 1))
    decays = warmup_decay(cfg, later) if cfg.warmup else np.full(len(later), cfg.decay)
    return float(np.prod(decays))


def steps_to_reach(cfg: EmaConfig, decay: float) -> float:
    """How many updates the warm-up takes to reach ``decay`` (inverse of ``ema_decay``)."""
    return cfg.warmup_gamma * ((1 - decay) ** (-1 / cfg.warmup_power) - 1)


@register_regularizer("ema", EmaConfig)
class Ema(Regularizer):
    keeps_average = True
    def __init__(self, cfg: EmaConfig) -> None:
        super().__init__(cfg)
        self.evaluate_raw = cfg.evaluate_raw
        self.average: Optional[Any] = None  # an AveragedModel, made from the built model
        self.updates = 0  # a Python count: reading AveragedModel.n_averaged would sync the device
        self.epochs = 0

    def setup(self, context: RunContext) -> None:
        self.epochs = context.epochs

    def on_model_built(self, model: nn.Module) -> None:
        from torch.optim.swa_utils import AveragedModel

        self.average = AveragedModel(model, use_buffers=False, multi_avg_fn=self.lerp)
        self.average.requires_grad_(False)

    def lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], count: Any) -> None:
        # AveragedModel calls this from its second update on; the decay follows the warm-up.
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        get_ema_multi_avg_fn(ema_decay(self.cfg, self.updates))(averaged, current, count)

    def wrap_scheduler(self, optimizer: torch.optim.Optimizer, scheduler: Any,
                       steps_per_epoch: int) -> Any:
        # The first hook that knows the run's length in steps: say what the decay will do.
        total = steps_per_epoch * self.epochs
        final = ema_decay(self.cfg, total - 1)
        window = 1 / (1 - final)  # the steps an exponential average with this decay spans
        reach = f"; {self.cfg.decay} from step {steps_to_reach(self.cfg, self.cfg.decay):,.0f} on" \
            if self.cfg.warmup else ""
        first = first_step_share(self.cfg, total)
        log.info("ema: %d steps; the decay reaches %.5f by the last one (an average over about "
                 "%.0f steps, %.1f epochs; the first step's weights keep %.2g of it)%s", total,
                 final, window, window / steps_per_epoch, first, reach)
        if first > math.exp(-1):  # the run is shorter than the average's window 1 / (1 - decay)
            log.warning("ema: the average will still be %.0f %% the first step's weights at the "
                        "end: turn regularizer.ema.warmup on or lower regularizer.ema.decay",
                        100 * first)
        return scheduler

    def on_step_end(self, model: nn.Module) -> None:
        self.average.update_parameters(model)
        self.updates += 1

    def averaged_weights(self) -> Optional[dict[str, torch.Tensor]]:
        return self.average.module.state_dict() if self.updates else None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        if epoch in (0, self.epochs - 1):
            log.info("ema: decay %.5f at step %d", self.last_decay(), self.updates)
        return False

    def last_decay(self) -> float:
        return ema_decay(self.cfg, self.updates - 1)

    def on_fit_end(self, model: nn.Module) -> dict[str, float]:
        return {"ema/decay": self.last_decay(), "ema/updates": self.updates}

    # Tensors and plain Python only: checkpoints are loaded with weights_only=True.
    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        # Copied into the average's own tensors, which stay on the training device.
        self.average.load_state_dict(state["average"])
        self.updates = state["updates"]
