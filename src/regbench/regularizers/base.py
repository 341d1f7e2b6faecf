"""The regularizer contract: one small class per regularizer, with explicit hooks.

The training loop calls these hooks and nothing else, so it knows no regularizer by name. A hook a
regularizer does not need keeps the do-nothing default below. The order of a training run:

1. ``setup(context)``            learn about the run (dataset, model, classes, epochs); refuse
                                 with a ConfigError what cannot work
2. ``configure_model(options)``  decide where normalization/dropout layers go, before the build
3. ``on_model_built(model)``     e.g. register a forward hook on a feature layer
4. ``param_group_options(...)``  per-parameter optimizer options (e.g. weight decay groups)
5. every training step: ``transform_batch`` (training data only), then ``base_loss`` of the one
   regularizer that owns it (else cross-entropy), then every ``loss_terms``
6. every epoch: ``on_epoch_end`` (may ask to stop), ``state_dict`` goes into the checkpoint
   after every optimizer step: ``on_step_end(model)`` (e.g. update a weight average)
7. ``on_fit_end(model)``         e.g. restore the best weights; returns extra metrics

Weight averaging (EMA, SWA). ``wrap_scheduler`` may replace the learning-rate schedule (built once,
after the optimizer). ``averaged_weights`` returns a model state to evaluate instead of the trained
weights (validation every epoch, and the test phase after ``on_fit_end``), or None; the loop then
also measures the trained weights under ``val_raw/`` and ``test_raw/`` unless ``evaluate_raw`` is
False, and with ``recompute_bn`` it recomputes BatchNorm statistics of the averaged weights over
the training split (``torch.optim.swa_utils.update_bn``) before the test phase.

Soft targets. ``transform_batch`` gets uint8 images and int64 labels [B] and may return float
images in [0, 1] (torchvision's float convention, normalized like uint8 ones) and soft targets: a
[B, K] float tensor of class probabilities (mixup, CutMix). Each regularizer's transform sees what
the previous one returned, so a transform that follows one of them must accept both. The loss then
uses ``StepOutput.targets`` (the soft targets, or the labels when there are none), while
``StepOutput.labels`` are always int64 class indices: for soft targets the dominant class (their
argmax), which the epoch's ``train/acc``, ``train/nll`` and ``train/ece`` are measured against.

The base loss. The objective is a base loss plus every regularizer's ``loss_terms``. The base loss
is cross-entropy against ``StepOutput.targets`` (logged as ``train/loss_ce``) unless a regularizer
sets ``owns_base_loss = True`` and returns its replacement from ``base_loss`` (focal loss, logit
normalization), logged as ``train/loss_<its name>`` and then there is no ``train/loss_ce``. Two
owners in one run are refused with one line by ``build_regularizers``.

Registration: ``@register_regularizer(name, config class)`` on the class puts it into
``REGULARIZERS`` and its config dataclass into Hydra's ConfigStore (``schema/regularizer/<name>``).
The weight penalties (l1, l2) share ``penalized_parameters``: conv/linear weights only by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from regbench.config import ConfigError, register_schema
from regbench.models.base import ModelOptions, is_weight_matrix
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
    labels: torch.Tensor  # int64 [B]: the class, or the dominant class of a soft target
    logits: torch.Tensor
    features: torch.Tensor  # penultimate features (the head's input)
    model: nn.Module
    epoch: int  # 0-based
    progress: float  # fraction of training done, in [0, 1)
    # float [B, K] class probabilities when a transform_batch mixed the targets, else None.
    soft_targets: Optional[torch.Tensor] = None

    @property
    def targets(self) -> torch.Tensor:
        """What the loss is computed against: the soft targets, or else the labels. Both forms are
        accepted by ``F.cross_entropy`` (class probabilities or class indices)."""
        return self.labels if self.soft_targets is None else self.soft_targets

    @staticmethod
    def split_targets(targets: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(labels, soft targets) from what ``transform_batch`` returned: class indices [B] as
        they are, or [B, K] probabilities with their dominant class as the label."""
        if targets.ndim == 2:
            return targets.argmax(dim=1), targets
        return targets, None


class Regularizer:
    name: ClassVar[str]
    # True: ``base_loss`` replaces the cross-entropy (at most one regularizer per run).
    owns_base_loss: ClassVar[bool] = False
    # True: the averaged weights need BatchNorm statistics recomputed before the test (SWA).
    recompute_bn: ClassVar[bool] = False
    # True: averaged_weights() returns a weight average (ema, swa): at most one per run.
    keeps_average: ClassVar[bool] = False
    # False: the trained (raw) weights are not measured beside averaged_weights().
    evaluate_raw: bool = True

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
        """Change a training batch (images and labels on the training device; uint8 and int64
        unless an earlier transform made them float images / soft targets, see the module
        docstring). Never sees val/test."""
        return images, labels

    def base_loss(self, step: StepOutput) -> torch.Tensor:
        """The scalar loss that replaces the cross-entropy; only called when ``owns_base_loss``."""
        raise NotImplementedError(f"{self.name} sets owns_base_loss but defines no base_loss")

    def loss_terms(self, step: StepOutput) -> dict[str, torch.Tensor]:
        """Scalar terms added to the base loss, logged as train/loss_<key>."""
        return {}

    def on_step_end(self, model: nn.Module) -> None:
        """Called after every optimizer step (and the scheduler's)."""

    def wrap_scheduler(self, optimizer: torch.optim.Optimizer, scheduler: Any,
                       steps_per_epoch: int) -> Any:
        """The per-step learning-rate scheduler to use instead of ``scheduler`` (it needs
        ``step``, ``state_dict`` and ``load_state_dict``); by default ``scheduler`` itself."""
        return scheduler

    def averaged_weights(self) -> Optional[dict[str, torch.Tensor]]:
        """A model state dict to evaluate instead of the trained weights, or None."""
        return None

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


def is_penalized(name: str, parameter: nn.Parameter, exclude_bias_and_norm: bool) -> bool:
    """Whether a weight penalty (l1, l2) acts on a parameter: every trainable one, or only the
    conv/linear weights (``is_weight_matrix``) when biases and norm parameters are excluded."""
    if not parameter.requires_grad:
        return False
    return not exclude_bias_and_norm or is_weight_matrix(name, parameter)


def penalized_parameters(model: nn.Module, exclude_bias_and_norm: bool) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if is_penalized(n, p, exclude_bias_and_norm)]


def build_regularizers(configs: dict[str, Any], context: RunContext) -> list[Regularizer]:
    """Instantiate the selected regularizers and refuse combinations that make no sense."""
    names = list(configs)
    if "none" in names and len(names) > 1:
        raise ConfigError(f"regularizer=none cannot be combined with others (got {names}); "
                          f"drop 'none' from the list")
    # From the instances: whether one owns the base loss may depend on its settings (augmix.jsd).
    regularizers = [REGULARIZERS.get(name)(configs[name]) for name in names]
    owners = [r.name for r in regularizers if r.owns_base_loss]
    if len(owners) > 1:
        raise ConfigError(f"regularizer={names} is not allowed: {' and '.join(owners)} each replace "
                          f"the cross-entropy (they own the base loss); choose one of them")
    averages = [r.name for r in regularizers if r.keeps_average]
    if len(averages) > 1:
        raise ConfigError(f"regularizer={names} is not allowed: {' and '.join(averages)} each keep "
                          f"a weight average for validation and the test to measure; choose one")
    for regularizer in regularizers:
        regularizer.setup(context)
    return regularizers
