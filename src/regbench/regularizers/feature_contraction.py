"""Feature contraction (Li & Maki, BMVC 2018): an L2 penalty on a layer's features.

Adds gamma * mean over the batch of ||f||^2 / (2 D) for the D-dimensional features f of one layer
(by default the penultimate fully connected layer before its ReLU, as in the paper). Outputs of
convolutional layers are flattened, so D = channels * height * width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from regbench.config import ConfigError, check
from regbench.regularizers.base import Regularizer, StepOutput, register_regularizer

PREFIX = "regularizer.feature_contraction"
# The head's input; the training loop hands it over in StepOutput.features, no hook needed.
PENULTIMATE = "penultimate"
# The penultimate layer before its activation, where the paper puts the penalty.
PENULTIMATE_PREACT = "penultimate_preact"


@dataclass
class FeatureContractionConfig:
    # Weight of gamma * mean_b ||f_b||^2 / (2 D). The authors' example (VladimirLi/
    # feature_contraction_example, MNIST) adds tf.nn.l2_loss(f) / (2 B D) = sum f^2 / (4 B D) to
    # the loss (its feature_contraction_weight only switches that on), which is gamma = 0.5 here.
    gamma: float = 0.5
    # Which model.feature_layers() entry to penalize. auto: penultimate_preact (the pre-ReLU FC
    # features, as in the paper) when the model offers it, else penultimate (the head's input).
    layer: str = "auto"

    def __post_init__(self) -> None:
        check(self.gamma >= 0, f"{PREFIX}.gamma", self.gamma, "a number >= 0")


def contraction(features: torch.Tensor) -> torch.Tensor:
    """mean over the batch of ||f||^2 / (2 D), for features [B, D]."""
    return features.pow(2).sum(dim=1).mean() / (2 * features.shape[1])


@register_regularizer("feature_contraction", FeatureContractionConfig)
class FeatureContraction(Regularizer):
    def __init__(self, cfg: FeatureContractionConfig) -> None:
        super().__init__(cfg)
        self.layer: Optional[str] = None  # the resolved layer name, known once the model is built
        self.hooked_features: Optional[torch.Tensor] = None  # the current training forward's

    def on_model_built(self, model: nn.Module) -> None:
        offered = model.feature_layers()
        if self.cfg.layer == "auto":
            self.layer = PENULTIMATE_PREACT if PENULTIMATE_PREACT in offered else PENULTIMATE
        elif self.cfg.layer in offered:
            self.layer = self.cfg.layer
        else:
            raise ConfigError(f"{PREFIX}.layer={self.cfg.layer!r} is not allowed: choose auto or "
                              f"a layer the model offers: {', '.join(sorted(offered))}")
        if self.layer != PENULTIMATE:
            offered[self.layer].register_forward_hook(self.store_features)

    def store_features(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        # Only training forwards feed the loss; evaluation forwards cost nothing here.
        if not module.training:
            return
        # A copy: the next layer may be an in-place ReLU, which would otherwise turn the stored
        # pre-activation into the post-activation (and break its backward).
        self.hooked_features = output.flatten(1).to(torch.float32, copy=True)

    def loss_terms(self, step: StepOutput) -> dict[str, torch.Tensor]:
        if self.layer == PENULTIMATE:
            features = step.features
        else:
            if self.hooked_features is None:
                raise RuntimeError(f"layer {self.layer!r} was not run in this training forward")
            # Taken, not kept: the graph behind it is freed with this step's loss.
            features, self.hooked_features = self.hooked_features, None
        return {"feature_contraction": self.cfg.gamma * contraction(features)}
