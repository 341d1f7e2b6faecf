"""Stochastic Weight Averaging (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and
Better Generalization", UAI), with torch.optim.swa_utils.

The first floor(start * epochs) epochs train on the run's own schedule; from there ``SWALR``
anneals each parameter group's learning rate from where the schedule left it to the SWA learning
rate (``lr_factor`` times the group's peak lr) over ``anneal_epochs`` epochs and holds it, and the
weights at the end of every epoch from the start on go into an equal-weight running mean
(``AveragedModel``; the paper's swa_c_epochs = 1). The test phase measures the average, with
BatchNorm statistics recomputed over the training split (``update_bn``, the engine's
``recompute_bn``; the average has no running statistics of its own), and the trained weights
under ``test_raw/`` unless ``evaluate_raw`` is false.

This is torch's recipe (its SWALR documentation): the anneal follows the start, where the paper's
schedule decays to the SWA lr before it (from 50 % to 90 % of the start epoch). Under the default
cosine schedule the lr at 75 % of the run is 0.15 x its peak, so SWALR raises it to the SWA lr,
0.5 x the peak: SWA averages the weights of a high constant lr instead of annealing to zero.

Validation measures the trained weights until the test phase when the model has BatchNorm (the
average's statistics exist only after ``update_bn``, a pass over the training split). Without
BatchNorm nothing is stale, so from the first averaged epoch on ``val/`` is the average and
``val_raw/`` the trained weights.

``SwaSchedule`` is written here because torch has no scheduler that switches to SWALR at a step
count: ``SequentialLR`` needs every scheduler built up front and resets the groups' lr when built,
while SWALR infers where its anneal starts from the group's current lr; so SWALR is made when the
switch comes, from the lr the run's schedule left, and one state dict holds both.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from regbench.config import check
from regbench.regularizers.base import Regularizer, RunContext, register_regularizer

log = logging.getLogger(__name__)

ANNEAL_STRATEGIES = ("cos", "linear")  # SWALR's anneal_strategy values


@dataclass
class SwaConfig:
    # The fraction of trainer.epochs trained on the run's own schedule before averaging: 0.75,
    # issue #25's default (the paper averages from epoch 161 of 225-300: a fraction 0.54-0.72).
    start: float = 0.75
    # SWA learning rate over the run's peak lr: timgaripov/swa train.py's defaults swa_lr 0.05 with
    # lr_init 0.1 (the paper's CIFAR-100 runs; CIFAR-10's PreResNets used 0.01 of 0.1).
    lr_factor: float = 0.5
    # Epochs SWALR takes to reach the SWA lr. Its default 10 belongs to its documentation's
    # 300-epoch example (3 % of the run); the same share of a 30-epoch run is 1 epoch.
    anneal_epochs: int = 1
    # SWALR's default anneal_strategy.
    anneal_strategy: str = "cos"
    # Also measure the trained weights (val_raw/, test_raw/) beside the average.
    evaluate_raw: bool = True

    def __post_init__(self) -> None:
        check(0 <= self.start < 1, "regularizer.swa.start", self.start,
              "a fraction of trainer.epochs in [0, 1) after which averaging starts (1 or more "
              "leaves no epoch to average)")
        check(self.lr_factor > 0, "regularizer.swa.lr_factor", self.lr_factor,
              "a number > 0 (the SWA learning rate over the run's peak optimizer.lr)")
        check(self.anneal_epochs >= 0, "regularizer.swa.anneal_epochs", self.anneal_epochs,
              "an integer >= 0 (0: the SWA learning rate at once)")
        check(self.anneal_strategy in ANNEAL_STRATEGIES, "regularizer.swa.anneal_strategy",
              self.anneal_strategy, f"one of {', '.join(ANNEAL_STRATEGIES)}")


def first_swa_epoch(start: float, epochs: int) -> int:
    """The 0-based index of the first epoch trained with SWALR and averaged."""
    return math.floor(start * epochs)


def peak_lr(group: dict[str, Any]) -> float:
    """A parameter group's peak learning rate: OneCycleLR's max_lr, else the base lr the
    schedulers start from (initial_lr, which torch's schedulers set)."""
    return group.get("max_lr", group.get("initial_lr", group["lr"]))


class SwaSchedule:
    """The run's per-step schedule for ``start_step`` optimizer steps, then SWALR (stepped per
    step, ``anneal_steps`` of them to reach the SWA lr); one state dict holds both."""

    def __init__(self, optimizer: torch.optim.Optimizer, before: Any, start_step: int,
                 swa_lrs: list[float], anneal_steps: int, strategy: str) -> None:
        self.optimizer, self.before, self.start_step = optimizer, before, start_step
        self.swa_lrs, self.anneal_steps, self.strategy = swa_lrs, anneal_steps, strategy
        self.steps = 0  # optimizer steps taken
        self.swalr: Optional[Any] = None
        if start_step == 0:
            self.swalr = self.make_swalr()

    def make_swalr(self) -> Any:
        """SWALR from the groups' current lr (its constructor keeps it unless anneal_steps is 0)."""
        from torch.optim.swa_utils import SWALR

        return SWALR(self.optimizer, self.swa_lrs, anneal_epochs=self.anneal_steps,
                     anneal_strategy=self.strategy)

    def step(self) -> None:
        """After optimizer step n: the lr of step n + 1, SWALR's once n reaches ``start_step``."""
        self.steps += 1
        if self.steps < self.start_step:
            self.before.step()
            return
        if self.swalr is None:
            self.swalr = self.make_swalr()
        self.swalr.step()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "before": self.before.state_dict(),
                "swalr": None if self.swalr is None else self.swalr.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.before.load_state_dict(state["before"])
        if state["swalr"] is None:
            return
        # The optimizer's state (loaded first) has the lr, which SWALR's constructor keeps (with
        # anneal_steps 0 it sets the SWA lr, the lr the groups have after the switch anyway).
        if self.swalr is None:
            self.swalr = self.make_swalr()
        self.swalr.load_state_dict(state["swalr"])


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@register_regularizer("swa", SwaConfig)
class Swa(Regularizer):
    keeps_average = True
    recompute_bn = True

    def __init__(self, cfg: SwaConfig) -> None:
        super().__init__(cfg)
        self.evaluate_raw = cfg.evaluate_raw
        self.average: Optional[Any] = None  # an AveragedModel, made from the built model
        self.start_epoch = 0
        self.steps_per_epoch = 1
        self.steps = 0  # optimizer steps taken
        self.snapshots = 0  # epochs averaged (a Python count: n_averaged would sync the device)
        self.batchnorm = False
        self.finished = False  # on_fit_end was called: the test phase measures the average

    def setup(self, context: RunContext) -> None:
        self.start_epoch = first_swa_epoch(self.cfg.start, context.epochs)
        log.info("swa: epochs 1-%d on the run's schedule, then the SWA lr (%g x the peak lr, "
                 "reached over %d epochs) and an average of the weights after each of epochs "
                 "%d-%d", self.start_epoch, self.cfg.lr_factor, self.cfg.anneal_epochs,
                 self.start_epoch + 1, context.epochs)

    def on_model_built(self, model: nn.Module) -> None:
        from torch.optim.swa_utils import AveragedModel

        # Buffers copied at each update (use_buffers=False); update_bn recomputes them at the end.
        self.average = AveragedModel(model, use_buffers=False)
        self.average.requires_grad_(False)
        self.batchnorm = has_batchnorm(model)

    def wrap_scheduler(self, optimizer: torch.optim.Optimizer, scheduler: Any,
                       steps_per_epoch: int) -> Any:
        self.steps_per_epoch = steps_per_epoch
        swa_lrs = [self.cfg.lr_factor * peak_lr(group) for group in optimizer.param_groups]
        return SwaSchedule(optimizer, scheduler, self.start_epoch * steps_per_epoch, swa_lrs,
                           self.cfg.anneal_epochs * steps_per_epoch, self.cfg.anneal_strategy)

    def on_step_end(self, model: nn.Module) -> None:
        # An epoch's last step (before its validation): average its weights from the start on.
        self.steps += 1
        epochs_done, within = divmod(self.steps, self.steps_per_epoch)
        if within == 0 and epochs_done > self.start_epoch:
            self.average.update_parameters(model)
            self.snapshots += 1

    def averaged_weights(self) -> Optional[dict[str, torch.Tensor]]:
        if self.snapshots == 0 or (self.batchnorm and not self.finished):
            return None
        return self.average.module.state_dict()

    def on_fit_end(self, model: nn.Module) -> dict[str, float]:
        self.finished = True
        if self.snapshots == 0:
            log.warning("swa: training ended before epoch %d, the first averaged one: the test "
                        "phase measures the trained weights", self.start_epoch + 1)
        return {"swa/snapshots": self.snapshots, "swa/start_epoch": self.start_epoch + 1}

    # Tensors and plain Python only: checkpoints are loaded with weights_only=True.
    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average.state_dict(), "steps": self.steps,
                "snapshots": self.snapshots}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.average.load_state_dict(state["average"])
        self.steps, self.snapshots = state["steps"], state["snapshots"]
