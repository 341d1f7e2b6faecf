"""Multilayer perceptron on flattened pixels.

Default 2x1024 ReLU: the permutation-invariant MNIST network of Pereyra et al. 2017 (Table 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from regbench.config import ModelConfig, register_schema
from regbench.models import MODELS
from regbench.models.base import (
    Classifier,
    ModelOptions,
    before_activation,
    hidden_block,
    input_block,
)


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [1024, 1024])


register_schema("model", "mlp", MLPConfig)


class MLP(Classifier):
    def __init__(self, in_features: int, hidden_sizes: list[int], num_classes: int,
                 options: ModelOptions) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(), input_block(options)]
        width = in_features
        for index, hidden in enumerate(hidden_sizes):
            block = hidden_block(nn.Linear(width, hidden, bias=options.norm is None), hidden,
                                 "linear", options, is_last_hidden=index == len(hidden_sizes) - 1)
            layers.append(block)
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.num_features = width

    def feature_layers(self) -> dict[str, nn.Module]:
        layers = super().feature_layers()
        hidden_blocks = [m for m in self.body if isinstance(m, nn.Sequential)]
        if hidden_blocks:
            layers["penultimate_preact"] = before_activation(hidden_blocks[-1])
        return layers


@MODELS.register("mlp")
def build_mlp(cfg: MLPConfig, input_shape: tuple, num_classes: int, options: ModelOptions) -> MLP:
    return MLP(math.prod(input_shape), list(cfg.hidden_sizes), num_classes, options)
