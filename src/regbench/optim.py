"""Optimizer and learning-rate schedule, built from the optimizer config and the regularizers'
parameter-group options."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from regbench.config import OptimizerConfig, OptimizerName, Schedule


def param_groups(model: nn.Module, regularizers: Iterable) -> list[dict[str, Any]]:
    """Group parameters whose regularizer-given options are equal (e.g. decay / no decay)."""
    groups: dict[tuple, dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        options: dict[str, Any] = {}
        for regularizer in regularizers:
            options.update(regularizer.param_group_options(name, parameter))
        key = tuple(sorted(options.items()))
        groups.setdefault(key, {"params": [], **options})["params"].append(parameter)
    return list(groups.values())


def build_optimizer(cfg: OptimizerConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    # Weight decay belongs to the l2 regularizer, so the optimizers' own default is 0 here.
    if cfg.name == OptimizerName.sgd:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=0.0)
    optimizer_class = torch.optim.AdamW if cfg.name == OptimizerName.adamw else torch.optim.Adam
    return optimizer_class(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=0.0)


def lr_factor(cfg: OptimizerConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr after ``step`` optimizer steps (warmup, then the schedule)."""
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        start = cfg.warmup_start_factor
        return start + (1.0 - start) * step / warmup_steps
    if cfg.schedule == Schedule.step:
        return cfg.step_gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    if cfg.schedule == Schedule.cosine:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_scheduler(cfg: OptimizerConfig, optimizer: torch.optim.Optimizer, epochs: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler: torch's OneCycleLR, or a LambdaLR for warmup + none/step/cosine."""
    total_steps = epochs * steps_per_epoch
    if cfg.schedule == Schedule.onecycle:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=cfg.onecycle_pct_start,
            cycle_momentum=cfg.name == OptimizerName.sgd and cfg.momentum > 0,
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, total_steps, steps_per_epoch)
    )
