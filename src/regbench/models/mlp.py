"""Multilayer perceptron on flattened pixels.

Default 2x1024 ReLU: the permutation-invariant MNIST network of Pereyra et al. 2017 (Table 1).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from torch import nn

from regbench.config import ModelConfig, check
from regbench.models.base import (
    Classifier,
    ModelOptions,
    before_activation,
    fully_connected_blocks,
    input_block,
    register_model,
)


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    # 2x1024 ReLU: Pereyra et al. 2017 (Table 1); [] is a linear classifier on the pixels.
    hidden_sizes: list[int] = field(default_factory=lambda: [1024, 1024])

    def __post_init__(self) -> None:
        check(all(size >= 1 for size in self.hidden_sizes), "model.hidden_sizes",
              list(self.hidden_sizes), "widths >= 1 (a list of layer widths, e.g. [1024, 1024])")


class MLP(Classifier):
    def __init__(self, in_features: int, hidden_sizes: list[int], num_classes: int,
                 options: ModelOptions) -> None:
        super().__init__()
        layers = OrderedDict(flatten=nn.Flatten(), input=input_block(options))
        blocks, width = fully_connected_blocks(in_features, hidden_sizes, options)
        layers.update(blocks)
        self.body = nn.Sequential(layers)
        self.head = nn.Linear(width, num_classes)
        self.num_features = width
        self.last_hidden = list(blocks)[-1] if blocks else None

    def feature_layers(self) -> dict[str, nn.Module]:
        layers = super().feature_layers()
        if self.last_hidden is not None:
            layers["penultimate_preact"] = before_activation(getattr(self.body, self.last_hidden))
        return layers


@register_model("mlp", MLPConfig)
def build_mlp(cfg: MLPConfig, input_shape: tuple, num_classes: int, options: ModelOptions) -> MLP:
    return MLP(math.prod(input_shape), list(cfg.hidden_sizes), num_classes, options)
