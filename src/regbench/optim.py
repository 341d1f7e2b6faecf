"""Optimizers and the learning-rate schedule: their schemas and the builders that take them with the
regularizers' parameter-group options.

Each optimizer is a schema (a subclass of ``OptimizerConfig``) next to its builder, registered with
``@register_optimizer(name, schema)``: the builder goes into ``OPTIMIZERS`` and the schema into
Hydra's ConfigStore as ``schema/optimizer/<name>``, which ``configs/optimizer/<name>.yaml`` pulls
in (``optimizer=sgd|adam|adamw``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterable, List

import torch
from omegaconf import MISSING
from torch import nn

from regbench.config import check, is_finite_positive, register_schema
from regbench.registry import Registry


class Schedule(str, Enum):
    none = "none"
    step = "step"
    cosine = "cosine"
    onecycle = "onecycle"


class OptimizerName(str, Enum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


@dataclass
class OptimizerConfig:
    """What every optimizer takes; each optimizer's schema below sets its own learning rate."""

    name: OptimizerName = MISSING
    lr: float = MISSING
    # Learning-rate schedule over the whole run, stepped every batch.
    schedule: Schedule = Schedule.cosine
    # Linear warmup from lr * warmup_start_factor over this many epochs (0: none); not with onecycle,
    # which has its own warmup.
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    # step schedule: multiply the lr by step_gamma every step_epochs epochs (torchvision: 30, 0.1).
    step_epochs: int = 30
    step_gamma: float = 0.1
    # onecycle: share of the run spent increasing the lr (Smith & Topin 2019; torch's default).
    onecycle_pct_start: float = 0.3
    # Discriminative learning rates (Howard & Ruder 2018, ULMFiT §3.2; fastai's slice(lo, hi)):
    # the body's parameters (models/base.Classifier: under ``body.``) train at lr * this factor,
    # the head's at lr, under every schedule. 1: one lr for every layer.
    body_lr_factor: float = 1.0

    def __post_init__(self) -> None:
        check(is_finite_positive(self.lr), "optimizer.lr", self.lr,
              "a number > 0, finite and below 3.4e+38 (float32's largest value)")
        check(self.warmup_epochs >= 0, "optimizer.warmup_epochs", self.warmup_epochs, "a number >= 0")
        check(0 < self.warmup_start_factor <= 1, "optimizer.warmup_start_factor",
              self.warmup_start_factor, "a number in (0, 1]")
        check(self.step_epochs >= 1, "optimizer.step_epochs", self.step_epochs, "an integer >= 1")
        check(0 < self.step_gamma <= 1, "optimizer.step_gamma", self.step_gamma,
              "a factor in (0, 1] (the lr is multiplied by it every step_epochs)")
        check(0 < self.onecycle_pct_start < 1, "optimizer.onecycle_pct_start",
              self.onecycle_pct_start, "a number in (0, 1)")
        check(is_finite_positive(self.body_lr_factor), "optimizer.body_lr_factor",
              self.body_lr_factor, "a number > 0 and finite (the body's lr as a multiple of the "
              "head's; 1: the same lr)")


# builder(its schema, parameter groups) -> optimizer. Weight decay belongs to the l2 regularizer
# (a loss term, or each group's weight_decay with decoupled=true), so the builders' own is 0.
OptimizerBuilder = Callable[[Any, list[dict[str, Any]]], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer")


def register_optimizer(name: str,
                       config_class: type) -> Callable[[OptimizerBuilder], OptimizerBuilder]:
    """Register a builder under ``name`` and its schema as ``schema/optimizer/<name>`` (pulled into
    ``configs/optimizer/<name>.yaml`` with ``/schema/optimizer/<name>@_here_``)."""

    def add(builder: OptimizerBuilder) -> OptimizerBuilder:
        register_schema("optimizer", name, config_class)
        return OPTIMIZERS.register(name)(builder)

    return add


@dataclass
class SGDConfig(OptimizerConfig):
    name: OptimizerName = OptimizerName.sgd
    # regbench's choice for batch 64 on small data, between torchvision's classification reference
    # (lr 0.1 at batch 256, cosine schedule) and its linear scaling to batch 64 (0.025).
    lr: float = 0.05
    # Momentum 0.9 (Nesterov optional), as in torchvision's classification reference.
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "a number in [0, 1)")


@register_optimizer("sgd", SGDConfig)
def build_sgd(cfg: SGDConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=0.0)


@dataclass
class AdamConfig(OptimizerConfig):
    name: OptimizerName = OptimizerName.adam
    # lr 1e-3 and betas (0.9, 0.999): Kingma & Ba 2015's defaults.
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optimizer.betas",
              self.betas, "two numbers in [0, 1)")


@register_optimizer("adam", AdamConfig)
def build_adam(cfg: AdamConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=0.0)


@dataclass
class AdamWConfig(AdamConfig):
    # AdamW (Loshchilov & Hutter 2019): Adam's defaults; its decoupled decay is the l2
    # regularizer's (regularizer=l2 regularizer.l2.decoupled=true), never hidden here.
    name: OptimizerName = OptimizerName.adamw


@register_optimizer("adamw", AdamWConfig)
def build_adamw(cfg: AdamWConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=0.0)


# The parameter-group key that marks which of a group's parameters are the body's (a list of bools,
# one per parameter); build_optimizer splits on it and removes it.
IN_BODY = "in_body"
BODY_PREFIX = "body."  # models/base.Classifier: the body's parameter names; the head's are "head."


def param_groups(model: nn.Module, regularizers: Iterable) -> list[dict[str, Any]]:
    """Group parameters whose regularizer-given options are equal (e.g. decay / no decay); each
    group says which of its parameters belong to the model's body (``IN_BODY``)."""
    groups: dict[tuple, dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        options: dict[str, Any] = {}
        for regularizer in regularizers:
            options.update(regularizer.param_group_options(name, parameter))
        key = tuple(sorted(options.items()))
        group = groups.setdefault(key, {"params": [], IN_BODY: [], **options})
        group["params"].append(parameter)
        group[IN_BODY].append(name.startswith(BODY_PREFIX))
    return list(groups.values())


def body_lr_groups(cfg: OptimizerConfig, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The optimizer's groups: with ``body_lr_factor`` 1, ``groups`` as they are; else each group
    split into its head part (first, at lr: the lr a run logs is group 0's) and its body part at
    lr * body_lr_factor, the regularizers' options (weight decay) kept on both.

    fastai's ``slice(lo, hi)`` spreads lrs geometrically over its 3 groups of a ResNet (stem to
    layer2, layer3 and layer4, head; fastcore's ``even_mults``) and ``slice(hi)`` gives every
    group but the head hi / 10 (fastai/optimizer.py ``set_hyper``; in fastai v1
    ``Learner.lr_range``, fastai/basic_train.py). regbench has two groups, body and head: factor
    0.1 is ``slice(hi)`` exactly; ``fine_tune``'s ``slice(lr / 100, lr)`` gives the body lr/100
    (stem to layer2) and lr/10 (layer3, layer4), between factors 0.01 and 0.1."""
    plain = [{key: value for key, value in group.items() if key != IN_BODY} for group in groups]
    if cfg.body_lr_factor == 1.0:
        return plain
    head, body = [], []
    for group, options in zip(groups, plain):
        in_body = group.get(IN_BODY, [False] * len(group["params"]))
        head_params = [p for p, inside in zip(group["params"], in_body) if not inside]
        body_params = [p for p, inside in zip(group["params"], in_body) if inside]
        if head_params:
            head.append({**options, "params": head_params})
        if body_params:
            body.append({**options, "params": body_params, "lr": cfg.lr * cfg.body_lr_factor})
    return head + body


def build_optimizer(cfg: OptimizerConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(OptimizerName(cfg.name).value)(cfg, body_lr_groups(cfg, groups))


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
            # One peak per group: a single number would give the body the head's lr.
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps, pct_start=cfg.onecycle_pct_start,
            cycle_momentum=cfg.name == OptimizerName.sgd and cfg.momentum > 0,
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, total_steps, steps_per_epoch)
    )
