"""Batch normalization (Ioffe & Szegedy 2015) after every hidden conv/linear layer.

The model puts the normalization layer between the layer and its activation, as in the paper
(models/base.py: ``hidden_block``); in eval mode it uses the running statistics from training.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from regbench.config import check
from regbench.models.base import LayerKind, ModelOptions
from regbench.regularizers.base import Regularizer, RunContext, register_regularizer


@dataclass
class BatchNormConfig:
    # Weight of the newest batch in the running mean/variance: PyTorch's default 0.1 (the paper
    # leaves the moving-average rate open).
    momentum: float = 0.1
    # Added to the variance before the square root: PyTorch's default 1e-5 (the paper's "constant
    # added to the mini-batch variance for numerical stability").
    eps: float = 1e-5

    def __post_init__(self) -> None:
        check(0 < self.momentum <= 1, "regularizer.batchnorm.momentum", self.momentum,
              "a number in (0, 1]")
        check(self.eps > 0, "regularizer.batchnorm.eps", self.eps, "a number > 0")


@register_regularizer("batchnorm", BatchNormConfig)
class BatchNorm(Regularizer):
    def __init__(self, cfg: BatchNormConfig) -> None:
        super().__init__(cfg)
        self.model_name = "?"
        # The layers handed to the model builder, to check that some were used.
        self.norm_layers: list[nn.Module] = []

    def setup(self, context: RunContext) -> None:
        self.model_name = context.model

    def configure_model(self, options: ModelOptions) -> None:
        options.norm = self.make_norm_layer

    def make_norm_layer(self, width: int, layer_kind: LayerKind) -> nn.Module:
        norm_class = nn.BatchNorm2d if layer_kind == "conv" else nn.BatchNorm1d
        layer = norm_class(width, eps=self.cfg.eps, momentum=self.cfg.momentum)
        self.norm_layers.append(layer)
        return layer

    def on_model_built(self, model: nn.Module) -> None:
        built = {id(module) for module in model.modules()}
        check(any(id(layer) in built for layer in self.norm_layers), "regularizer", "batchnorm",
              f"model {self.model_name!r} as configured has no hidden layer to normalize")
