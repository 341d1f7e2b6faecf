"""Dropout (Srivastava et al. 2014) and three variants, placed in the model through ModelOptions.

The model decides where hidden blocks are; this module only says which layer each block gets
(``options.dropout``), whether the input gets one (``options.input_dropout``) and how dropout and
normalization are ordered (``options.dropout_placement``, explained in models/base.py). The layers
torch lacks (Gaussian dropout, Uout, weighted channel dropout) are in models/layers.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from torch import nn

from regbench.config import check
from regbench.models.base import DropoutPlacement, DropoutSite, ModelOptions
from regbench.models.layers import (  # noqa: F401  (DROPOUT_LAYERS: re-exported for run/probes.py)
    DROPOUT_LAYERS,
    GaussianDropout,
    Uout,
    WeightedChannelDropout,
)
from regbench.regularizers.base import Regularizer, RunContext, register_regularizer


class DropoutKind(str, Enum):
    standard = "standard"  # Bernoulli dropout (nn.Dropout) on linear hidden layers
    gaussian = "gaussian"  # multiplicative N(1, p/(1-p)) noise on linear hidden layers
    uout = "uout"  # x + x*r, r ~ U(-beta, beta), on linear hidden layers
    channel = "channel"  # whole feature maps (nn.Dropout2d) on conv hidden layers
    # Hou & Wang 2019: channels kept by their activation, once after the last conv block
    weighted_channel = "weighted_channel"


@dataclass
class DropoutConfig:
    # Drop probability in hidden layers: 0.5 (Srivastava et al. 2014, JMLR 15, Appendix A.4; their
    # p is the keep probability). gaussian uses it for the noise variance p/(1-p); uout ignores it.
    p: float = 0.5
    # Drop probability of input pixels; 0 = no input dropout. Srivastava et al. 2014 drop 0.2 of
    # the inputs when they use it (keep probability 0.8). Always element-wise, Bernoulli (Gaussian
    # for kind=gaussian): dropping whole colour channels of an image is not input dropout.
    input_p: float = 0.0
    kind: DropoutKind = DropoutKind.standard
    # Uout noise range: r ~ U(-beta, beta), variance beta^2/3 (Li et al. 2019, CVPR, "variance
    # shift"); 0.1, a small beta as in their Uout experiments, shifts the variance by only 1/300.
    beta: float = 0.1
    # after_bn (default): with normalization, dropout only after the last normalized layer, so no
    # normalization layer sees dropout's train/test variance shift (Li et al. 2019); before_bn:
    # dropout in every hidden block. Same thing without normalization. See models/base.py.
    placement: DropoutPlacement = DropoutPlacement.after_bn
    # weighted_channel (Hou & Wang 2019, AAAI): the share q of each image's channels that weighted
    # random selection keeps (the rest are dropped), and the probability that an image goes through
    # channel selection at all (their random number generator); the other images pass unchanged.
    # 0.5 and 0.5: values as recalled from the paper, not re-checked against it (see
    # /work/shared/notes/references.md); on average a share (1 - q) * rng_p = 1/4 of the channels
    # is dropped.
    wcd_keep_ratio: float = 0.5
    wcd_rng_p: float = 0.5

    def __post_init__(self) -> None:
        # p = 1 would drop everything and make the 1/(1-p) rescaling infinite.
        check(0 <= self.p < 1, "regularizer.dropout.p", self.p, "a probability in [0, 1)")
        check(0 <= self.input_p < 1, "regularizer.dropout.input_p", self.input_p,
              "a probability in [0, 1)")
        # beta < 1 keeps 1 + r > 0, so the noise scales a unit without flipping its sign.
        check(0 < self.beta < 1, "regularizer.dropout.beta", self.beta, "a number in (0, 1)")
        check(0 < self.wcd_keep_ratio <= 1, "regularizer.dropout.wcd_keep_ratio",
              self.wcd_keep_ratio, "a share of the channels in (0, 1]")
        check(0 <= self.wcd_rng_p <= 1, "regularizer.dropout.wcd_rng_p", self.wcd_rng_p,
              "a probability in [0, 1]")


def hidden_dropout_layer(cfg: DropoutConfig, layer_kind: DropoutSite) -> Optional[nn.Module]:
    """The dropout layer for one site, or None where this kind does not apply."""
    if cfg.kind == DropoutKind.weighted_channel:
        # Only after the last conv block: Hou & Wang 2019 use it in the deep conv layers only.
        return WeightedChannelDropout(cfg.wcd_keep_ratio, cfg.wcd_rng_p) \
            if layer_kind == "last_conv" else None
    if cfg.kind == DropoutKind.channel:
        return nn.Dropout2d(cfg.p) if layer_kind == "conv" else None
    if layer_kind != "linear":
        return None
    if cfg.kind == DropoutKind.gaussian:
        return GaussianDropout(cfg.p)
    if cfg.kind == DropoutKind.uout:
        return Uout(cfg.beta)
    return nn.Dropout(cfg.p)


def input_dropout_layer(cfg: DropoutConfig) -> nn.Module:
    if cfg.kind == DropoutKind.gaussian:
        return GaussianDropout(cfg.input_p)
    return nn.Dropout(cfg.input_p)


@register_regularizer("dropout", DropoutConfig)
class Dropout(Regularizer):
    def __init__(self, cfg: DropoutConfig) -> None:
        super().__init__(cfg)
        self.model_name = "?"
        # The hidden-block layers handed to the model builder, to check that some were used.
        self.hidden_layers: list[nn.Module] = []

    def setup(self, context: RunContext) -> None:
        self.model_name = context.model

    def configure_model(self, options: ModelOptions) -> None:
        options.dropout = self.make_hidden_layer
        if self.cfg.input_p > 0:
            options.input_dropout = lambda: input_dropout_layer(self.cfg)
        options.dropout_placement = self.cfg.placement

    def make_hidden_layer(self, layer_kind: DropoutSite) -> Optional[nn.Module]:
        layer = hidden_dropout_layer(self.cfg, layer_kind)
        if layer is not None:
            self.hidden_layers.append(layer)
        return layer

    def on_model_built(self, model: nn.Module) -> None:
        built = {id(module) for module in model.modules()}
        kind = self.cfg.kind
        if kind == DropoutKind.weighted_channel:
            check(any(id(layer) in built for layer in self.hidden_layers), "regularizer.dropout.kind",
                  kind.value, f"model {self.model_name!r} has no convolutional layers "
                  f"(weighted channel dropout needs model=lenet, convnet, resnet, resnet18, resnet34 "
                  f"or resnet50){self.after_bn_hint()}")
            return
        layer_kind = "conv" if kind == DropoutKind.channel else "linear"
        after_bn = self.cfg.placement == DropoutPlacement.after_bn
        where = " (placement=after_bn keeps dropout out of layers that feed a normalization layer)" \
            if after_bn else ""
        other_kinds = "kind=standard, gaussian or uout" if layer_kind == "conv" else "kind=channel"
        check(any(id(layer) in built for layer in self.hidden_layers), "regularizer.dropout.kind",
              kind.value, f"model {self.model_name!r} has no {layer_kind} hidden layer where "
              f"dropout goes{where}, so {kind.value} dropout would add nothing; try {other_kinds}"
              f"{' or placement=before_bn' if after_bn else ''}")

    def after_bn_hint(self) -> str:
        """Why a conv model got no weighted channel dropout: its last conv maps feed a BN'd layer."""
        if self.model_name == "mlp" or self.cfg.placement != DropoutPlacement.after_bn:
            return ""
        return (" or, with BatchNorm, placement=before_bn (the last conv maps feed a normalized "
                "layer, and placement=after_bn keeps dropout out of those)")
