"""The regularizer contract: one small class per regularizer, with explicit hooks.

The training loop calls these hooks and nothing else, so it knows no regularizer by name. A hook a
regularizer does not need keeps the do-nothing default below. The order of a training run:

1. ``setup(context)``            learn about the run (dataset, model, classes, epochs); refuse
                                 with a ConfigError what cannot work
2. ``configure_model(options)``  decide where normalization/dropout layers go, before the build
3. ``on_model_built(model)``     e.g. register a forward hook on a feature layer
4. ``param_group_options(...)``  per-parameter optimizer options (e.g. weight decay groups)
5. every training step: ``transform_batch`` (training data only), then ``loss_terms``
6. every epoch: ``on_epoch_end`` (may ask to stop), ``state_dict`` goes into the checkpoint
7. ``on_fit_end(model)``         e.g. restore the best weights; returns extra metrics
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from regbench.config import ConfigError, register_schema
from regbench.models.base import ModelOptions
from regbench.registry import Registry


@dataclass
class RunContext:
    """What a regularizer may need to know about the run it is part of."""

    dataset: str
    model: str
    num_classes: int
    epochs: int
    optimizer: str
    val_size: int = 0


@dataclass
class StepOutput:
    """One training step's forward pass, as the loss terms see it."""

    inputs: torch.Tensor  # normalized float images given to the model
    labels: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor  # penultimate features (the head's input)
    model: nn.Module
    epoch: int  # 0-based
    progress: float  # fraction of training done, in [0, 1)


class Regularizer:
    name: ClassVar[str]
    # Names of regularizers this one cannot be combined with, and why.
    conflicts: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def setup(self, context: RunContext) -> None:
        """Raise ConfigError if this regularizer cannot work in this run."""

    def configure_model(self, options: ModelOptions) -> None:
        """Change how the model is built (normalization, dropout)."""

    def on_model_built(self, model: nn.Module) -> None:
        """Inspect or hook into the built model."""

    def param_group_options(self, name: str, parameter: nn.Parameter) -> dict[str, Any]:
        """Optimizer options for one parameter; parameters with equal options share a group."""
        return {}

    def transform_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Change a training batch (uint8 images on the training device). Never sees val/test."""
        return images, labels

    def loss_terms(self, step: StepOutput) -> dict[str, torch.Tensor]:
        """Scalar terms added to the cross-entropy, logged as train/loss_<key>."""
        return {}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Called after validation; return True to stop training."""
        return False

    def on_fit_end(self, model: nn.Module) -> dict[str, float]:
        """Called before the test evaluation; returns metrics to record."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer")


def register_regularizer(name: str, config_class: type) -> Callable[[type[Regularizer]], type[Regularizer]]:
    """Register a regularizer class under ``name`` and its config dataclass as the schema of
    ``configs/regularizer/<name>.yaml`` (pulled in there with ``/schema/regularizer/<name>@_here_``)."""

    def add(cls: type[Regularizer]) -> type[Regularizer]:
        cls.name = name
        register_schema("regularizer", name, config_class)
        return REGULARIZERS.register(name)(cls)

    return add


def build_regularizers(configs: dict[str, Any], context: RunContext) -> list[Regularizer]:
    """Instantiate the selected regularizers and refuse combinations that make no sense."""
    names = list(configs)
    if "none" in names and len(names) > 1:
        raise ConfigError(f"regularizer=none cannot be combined with others (got {names}); "
                          f"drop 'none' from the list")
    regularizers = [REGULARIZERS.get(name)(configs[name]) for name in names]
    for regularizer in regularizers:
        regularizer.setup(context)
    return regularizers
