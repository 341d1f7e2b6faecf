"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth", ECCV).

In training, the residual branch of each block is dropped per example (the block passes only its
shortcut), block l of L surviving with probability p_l = 1 - l/L * (1 - p_L) (the paper's linear
decay rule, from 1 at the input to p_L at the last block); at test time every block runs. The layer
is torchvision's ``ops.StochasticDepth`` in mode "row" (per example), placed by the model from
``ModelOptions.stochastic_depth_survival`` (models/resnet.py: residual_drop). Only models with
residual blocks place it; any other model is refused with one line once it is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from regbench.config import ConfigError, check
from regbench.models.base import ModelOptions
from regbench.regularizers.base import Regularizer, RunContext, register_regularizer

PREFIX = "regularizer.stochastic_depth"


@dataclass
class StochasticDepthConfig:
    # Survival probability p_L of the last residual block; 0.5 is Huang et al. 2016's setting for
    # their CIFAR-10/100 and SVHN ResNet-110 (§4, "linear decay rule ... p_L = 0.5").
    p_last: float = 0.5

    def __post_init__(self) -> None:
        # p_L = 1 would drop nothing; p_L = 0 would always drop the last block.
        check(0 < self.p_last < 1, f"{PREFIX}.p_last", self.p_last, "a number in (0, 1)")


@register_regularizer("stochastic_depth", StochasticDepthConfig)
class StochasticDepthRegularizer(Regularizer):
    def __init__(self, cfg: StochasticDepthConfig) -> None:
        super().__init__(cfg)
        self.model_name = ""  # for the message when the model has no residual blocks

    def setup(self, context: RunContext) -> None:
        self.model_name = context.model

    def configure_model(self, options: ModelOptions) -> None:
        options.stochastic_depth_survival = self.cfg.p_last

    def on_model_built(self, model: nn.Module) -> None:
        from torchvision.ops import StochasticDepth  # see DEVELOPERS.md, "Start-up"

        if not any(isinstance(module, StochasticDepth) for module in model.modules()):
            raise ConfigError(f"regularizer=stochastic_depth is not allowed with "
                              f"model={self.model_name}: it drops residual blocks, which only "
                              f"model=resnet, resnet18, resnet34 and resnet50 have")
