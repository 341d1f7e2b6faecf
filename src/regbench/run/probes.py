"""Measurements of claims from the regularization literature, taken on a trained or training model.

- ``fit_metrics``: Zhang et al. 2017's "time to fit" (Fig. 1b): the first epoch whose training
  accuracy reaches ``trainer.fit_threshold`` (``fit/epoch``; null when it never does).
- ``variance_shift_metrics``: Li et al. 2019's variance shift. For every BatchNorm layer that runs
  after a dropout layer, per channel (running_var + eps) / (var + eps), where var is the variance
  of the layer's input in eval mode over the test split: what BN divides by against what it gets.
  1 = no shift; dropout before BN in training inflates the running variance, so > 1. Per layer the
  mean over channels; ``test/variance_shift_max`` and ``test/variance_shift_mean`` over layers.
- ``scale_invariance_record``: van Laarhoven 2017 / Zhang et al. 2019. A conv/linear layer whose
  output goes straight into BatchNorm computes the same function for any scale of its weights, so
  a gradient step of size lr moves its direction by about lr / ||w||^2: ``train/effective_lr``
  (mean over those layers) and ``train/bn_weight_norm`` (mean of their weights' L2 norms).

All run in eval mode under no_grad and draw no random numbers, so they change neither training nor
a resumed run. Which layers feed which is found by running the model once with forward hooks
(module registration order is not execution order: a ResNet block registers its dropout last).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from regbench.models.layers import DROPOUT_LAYERS
from regbench.run.spec import (
    BN_WEIGHT_NORM,
    EFFECTIVE_LR,
    FIT_EPOCH,
    VARIANCE_SHIFT_MAX,
    VARIANCE_SHIFT_MEAN,
)

WEIGHTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# --- time to fit ---------------------------------------------------------------------------------

def fit_epoch(history: Sequence[Mapping[str, Any]], threshold: float) -> Optional[int]:
    """The first (1-based) epoch whose train/acc reaches the threshold, or None."""
    for record in history:
        if record.get("train/acc", 0.0) >= threshold:
            return int(record["epoch"])
    return None


def fit_metrics(history: Sequence[Mapping[str, Any]], threshold: float) -> dict[str, Any]:
    return {FIT_EPOCH: fit_epoch(history, threshold)}


# --- tracing which layer feeds which ------------------------------------------------------------

class restore_mode:
    """Eval mode inside the block, the model's previous mode after it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def normalization_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.running_var is not None]


@torch.no_grad()
def bn_after_dropout(model: nn.Module, inputs: torch.Tensor) -> list[_BatchNorm]:
    """The BatchNorm layers that run after some dropout layer in one forward pass of ``inputs``."""
    seen_dropout = [False]
    followers: list[_BatchNorm] = []

    def on_dropout(*_: object) -> None:
        seen_dropout[0] = True

    def on_norm(module: nn.Module, _: object) -> None:
        if seen_dropout[0] and module not in followers:
            followers.append(module)

    forward_with_hooks(model, inputs, [m.register_forward_hook(on_dropout) for m in model.modules()
                                       if isinstance(m, DROPOUT_LAYERS)]
                       + [m.register_forward_pre_hook(on_norm) for m in normalization_layers(model)])
    return followers


@torch.no_grad()
def layers_feeding_bn(model: nn.Module, inputs: torch.Tensor) -> list[nn.Module]:
    """Conv/linear layers whose output tensor is exactly a BatchNorm layer's input (scale-invariant
    layers), found in one forward pass of ``inputs``."""
    outputs: dict[int, nn.Module] = {}
    feeding: list[nn.Module] = []

    def on_weighted(module: nn.Module, _: object, output: torch.Tensor) -> None:
        outputs[id(output)] = module

    def on_norm(module: nn.Module, args: tuple) -> None:
        layer = outputs.get(id(args[0]))
        if layer is not None and layer not in feeding:
            feeding.append(layer)

    forward_with_hooks(model, inputs, [m.register_forward_hook(on_weighted) for m in model.modules()
                                       if isinstance(m, WEIGHTED_LAYERS)]
                       + [m.register_forward_pre_hook(on_norm) for m in normalization_layers(model)])
    return feeding


def forward_with_hooks(model: nn.Module, inputs: torch.Tensor, handles: list) -> None:
    """One forward pass of ``inputs`` (the model's train/eval mode kept), then the hooks removed."""
    try:
        with restore_mode(model):
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()


# --- variance shift ----------------------------------------------------------------------------

class InputVariance:
    """Per-channel variance of a BatchNorm layer's inputs, accumulated over batches in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: Optional[torch.Tensor] = None
        self.sum_squares: Optional[torch.Tensor] = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().double()
        # Channels are dim 1 for [B, C] and [B, C, H, W]; every other dim is a sample of them.
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
        batch_sum, batch_squares = per_channel.sum(dim=1), per_channel.pow(2).sum(dim=1)
        self.count += per_channel.shape[1]
        self.sum = batch_sum if self.sum is None else self.sum + batch_sum
        self.sum_squares = batch_squares if self.sum_squares is None else self.sum_squares + batch_squares

    def variance(self) -> torch.Tensor:
        """Population variance (BN's running_var is unbiased, but over thousands of values the
        difference is negligible)."""
        mean = self.sum / self.count
        return (self.sum_squares / self.count - mean.pow(2)).clamp_min(0)


def layer_shift(norm: _BatchNorm, observed: InputVariance) -> float:
    running = norm.running_var.detach().double()
    ratio = (running + norm.eps) / (observed.variance() + norm.eps)
    return ratio.mean().item()


def model_inputs(batches: Iterable, device: torch.device,
                 prepare: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[torch.Tensor]:
    """The model's inputs from (uint8 images, labels) batches: on the device, normalized."""
    for images, _ in batches:
        yield prepare(images.to(device, non_blocking=True))


@torch.no_grad()
def variance_shift_metrics(model: nn.Module, batches: Iterable, device: torch.device,
                           prepare: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """``test/variance_shift_max``/``_mean`` over the BN layers after dropout; {} when there are
    none (no BN, no dropout, or dropout only after the last BN). ``batches`` yield (images,
    labels) as a DataBundle split does; ``prepare`` turns images into model inputs."""
    if not normalization_layers(model) or not any(isinstance(m, DROPOUT_LAYERS)
                                                  for m in model.modules()):
        return {}
    inputs = model_inputs(batches, device, prepare)
    first = next(inputs, None)
    if first is None:
        return {}
    followers = bn_after_dropout(model, first)
    if not followers:
        return {}
    observed = {norm: InputVariance() for norm in followers}
    handles = [norm.register_forward_pre_hook(observed[norm]) for norm in followers]
    try:
        with restore_mode(model):
            model(first)
            for batch in inputs:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    shifts = [layer_shift(norm, observed[norm]) for norm in followers]
    return {VARIANCE_SHIFT_MAX: max(shifts), VARIANCE_SHIFT_MEAN: sum(shifts) / len(shifts)}


# --- effective learning rate under BatchNorm -----------------------------------------------------

# The scale-invariant layers of each model, found once (the architecture does not change).
_FEEDING_BN: "weakref.WeakKeyDictionary[nn.Module, list[nn.Module]]" = weakref.WeakKeyDictionary()


def scale_invariant_layers(model: nn.Module, inputs: Iterator[torch.Tensor]) -> list[nn.Module]:
    if model not in _FEEDING_BN:
        first = next(inputs, None) if normalization_layers(model) else None
        _FEEDING_BN[model] = [] if first is None else layers_feeding_bn(model, first)
    return _FEEDING_BN[model]


def effective_lr(lr: float, layers: Sequence[nn.Module]) -> tuple[float, float]:
    """(mean over layers of lr / ||w||^2, mean of ||w||)."""
    norms = [layer.weight.detach().double().norm().item() for layer in layers]
    return sum(lr / norm ** 2 for norm in norms) / len(norms), sum(norms) / len(norms)


def scale_invariance_record(model: nn.Module, lr: float, batches: Iterable, device: torch.device,
                            prepare: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """Per epoch: ``train/effective_lr`` and ``train/bn_weight_norm`` of the conv/linear layers
    that feed BatchNorm; {} for a model without any. One batch of ``batches`` is run once per
    model to find those layers."""
    layers = scale_invariant_layers(model, model_inputs(batches, device, prepare))
    if not layers:
        return {}
    value, norm = effective_lr(lr, layers)
    return {EFFECTIVE_LR: value, BN_WEIGHT_NORM: norm}
