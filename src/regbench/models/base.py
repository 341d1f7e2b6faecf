"""The contract every model keeps, the hidden-layer block that regularizers shape, and the registry.

A model returns logits and exposes its penultimate features (``forward_features`` then
``forward_head``, as in timm), so the training loop gets both from one forward pass. Where
normalization and dropout layers go is decided by ``ModelOptions``, which regularizers fill in
before the model is built (see regularizers/base.py: ``configure_model``); models never hard-code them.

A model module registers its builder with ``@register_model(name, config class)``: the builder goes
into ``MODELS`` and the config dataclass into Hydra's ConfigStore as ``schema/model/<name>``, which
``configs/model/<name>.yaml`` pulls in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Literal, Optional, Sequence

import torch
from torch import nn

from regbench.config import register_schema
from regbench.registry import Registry

LayerKind = Literal["linear", "conv"]
# Where a dropout layer can go: a hidden linear or conv block, or once on the feature maps of the
# last convolutional block ("last_conv": weighted channel dropout's place, Hou & Wang 2019).
DropoutSite = Literal["linear", "conv", "last_conv"]


class DropoutPlacement(str, Enum):
    """How dropout and normalization are ordered (``ModelOptions.wants_dropout``); the dropout
    regularizer's ``placement`` option."""

    after_bn = "after_bn"
    before_bn = "before_bn"


@dataclass
class ModelOptions:
    # norm(width, kind) -> a normalization layer, inserted after each hidden conv/linear layer.
    norm: Optional[Callable[[int, LayerKind], nn.Module]] = None
    # dropout(site) -> a dropout layer for that site, or None to leave it alone.
    dropout: Optional[Callable[[DropoutSite], Optional[nn.Module]]] = None
    # input_dropout() -> a dropout layer applied to the input image.
    input_dropout: Optional[Callable[[], nn.Module]] = None
    # after_bn: dropout never feeds a normalization layer, so none sees dropout's train/test
    # variance shift (Li et al. 2019); in an MLP with BatchNorm that leaves the last hidden layer
    # (the penultimate features). before_bn: dropout in every hidden block. See wants_dropout.
    dropout_placement: DropoutPlacement = DropoutPlacement.after_bn
    # Stochastic depth (Huang et al. 2016): survival probability of the LAST residual block, the
    # others' decaying linearly from 1 at the input to it; None: every block always runs. Only
    # models with residual blocks use it (see models/cifar_resnet.py: residual_drop).
    stochastic_depth_survival: Optional[float] = None

    def wants_dropout(self, feeds_norm: bool) -> bool:
        """The placement rule, for every model: dropout goes into a hidden block unless its output
        feeds a normalization layer and the placement is after_bn."""
        return self.dropout is not None and (
            not feeds_norm or self.dropout_placement == DropoutPlacement.before_bn)


def hidden_block(layer: nn.Module, width: int, kind: LayerKind, options: ModelOptions,
                 is_last_hidden: bool) -> nn.Sequential:
    """layer -> [norm] -> ReLU -> [dropout]; the norm sits before the activation (Ioffe & Szegedy 2015)."""
    parts: list[nn.Module] = [layer]
    if options.norm is not None:
        parts.append(options.norm(width, kind))
    parts.append(nn.ReLU(inplace=True))
    if options.wants_dropout(feeds_norm=options.norm is not None and not is_last_hidden):
        dropout = options.dropout(kind)
        if dropout is not None:
            parts.append(dropout)
    return nn.Sequential(*parts)


def pooled_block(conv: nn.Module, width: int, pool: nn.Module,
                 options: ModelOptions) -> nn.Sequential:
    """conv -> [norm] -> ReLU -> pool -> [dropout]: a conv ``hidden_block`` with pooling right
    after the activation, so dropout (if any) drops pooled units, as in Srivastava et al. 2014's
    conv nets; dropout before max-pooling would bias which unit wins the max."""
    parts = list(hidden_block(conv, width, "conv", options, is_last_hidden=False))
    activation = [isinstance(part, nn.ReLU) for part in parts].index(True)
    return nn.Sequential(*parts[:activation + 1], pool, *parts[activation + 1:])


def fully_connected_blocks(in_features: int, hidden_sizes: Sequence[int],
                           options: ModelOptions) -> tuple["OrderedDict[str, nn.Sequential]", int]:
    """Hidden layers fc1..fcN as ``hidden_block``s (the last one gives the penultimate features),
    and the width of their output (``in_features`` when there are none)."""
    blocks: OrderedDict[str, nn.Sequential] = OrderedDict()
    width = in_features
    for index, hidden in enumerate(hidden_sizes, start=1):
        linear = nn.Linear(width, hidden, bias=options.norm is None)
        blocks[f"fc{index}"] = hidden_block(linear, hidden, "linear", options,
                                            is_last_hidden=index == len(hidden_sizes))
        width = hidden
    return blocks, width


def last_conv_dropout(options: ModelOptions, feeds_norm: bool) -> nn.Module:
    """The layer a model puts once after its last convolutional block (``dropout("last_conv")``,
    under the same placement rule as every hidden block), or an Identity."""
    dropout = options.dropout("last_conv") if options.wants_dropout(feeds_norm) else None
    return dropout if dropout is not None else nn.Identity()


def before_activation(block: nn.Sequential) -> nn.Module:
    """The layer of a ``hidden_block`` whose output is the pre-activation (after the norm, if any)."""
    modules = list(block)
    return modules[[isinstance(m, nn.ReLU) for m in modules].index(True) - 1]


def input_block(options: ModelOptions) -> nn.Module:
    return options.input_dropout() if options.input_dropout is not None else nn.Identity()


class Classifier(nn.Module):
    """Base class: subclasses build ``self.body`` (image -> penultimate features) and ``self.head``."""

    num_features: int

    def __init__(self) -> None:
        super().__init__()
        # Identity at the head's input: a hook on it sees exactly the penultimate features.
        self.penultimate = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.penultimate(self.body(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def feature_layers(self) -> dict[str, nn.Module]:
        """Named layers whose outputs a regularizer may read; ``penultimate`` is always there."""
        return {"penultimate": self.penultimate}


def is_weight_matrix(name: str, parameter: nn.Parameter) -> bool:
    """A conv or linear weight: more than one dimension and not a bias (biases and normalization
    parameters are 1-D). The parameters weight penalties act on (regularizers/base.py:
    ``is_penalized``)."""
    return parameter.ndim > 1 and name.rsplit(".", 1)[-1] != "bias"


# builder(model config, input shape (C, H, W), number of classes, options) -> Classifier
ModelBuilder = Callable[[object, tuple, int, ModelOptions], Classifier]
MODELS: Registry[ModelBuilder] = Registry("model")


def register_model(name: str, config_class: type) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder under ``name`` and its config dataclass as the schema of
    ``configs/model/<name>.yaml`` (pulled in there with ``/schema/model/<name>@_here_``)."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        register_schema("model", name, config_class)
        return MODELS.register(name)(builder)

    return add


def build_model(cfg, input_shape: tuple, num_classes: int, options: ModelOptions) -> Classifier:
    model = MODELS.get(cfg.name)(cfg, input_shape, num_classes, options)
    assert isinstance(model, nn.Module)
    return model
