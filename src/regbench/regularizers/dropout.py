"""Dropout (Srivastava et al. 2014) and three variants, placed in the model through ModelOptions.

The model decides where hidden blocks are; this module only says which layer each block gets
(``options.dropout``), whether the input gets one (``options.input_dropout``) and how dropout and
normalization are ordered (``options.dropout_placement``, explained in models/base.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch
from torch import nn

from regbench.config import check
from regbench.models.base import DropoutSite, ModelOptions
from regbench.regularizers.base import Regularizer, RunContext, register_regularizer


class DropoutKind(str, Enum):
    standard = "standard"  # Bernoulli dropout (nn.Dropout) on linear hidden layers
    gaussian = "gaussian"  # multiplicative N(1, p/(1-p)) noise on linear hidden layers
    uout = "uout"  # x + x*r, r ~ U(-beta, beta), on linear hidden layers
    channel = "channel"  # whole feature maps (nn.Dropout2d) on conv hidden layers
    # Hou & Wang 2019: channels kept by their activation, once after the last conv block
    weighted_channel = "weighted_channel"


class DropoutPlacement(str, Enum):
    after_bn = "after_bn"
    before_bn = "before_bn"


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


# torch has no Gaussian or Uout dropout layer, hence the two small modules below.
class GaussianDropout(nn.Module):
    """x * m with m ~ N(1, p/(1-p)) per element (Srivastava et al. 2014 §10): the mean and variance
    of inverted Bernoulli dropout at rate p. The identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.std = math.sqrt(p / (1 - p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (1 + self.std * torch.randn_like(x))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Uout(nn.Module):
    """x + x * r with r ~ U(-beta, beta) per element (Li et al. 2019): zero-mean noise whose small
    variance barely shifts the statistics a following BatchNorm learns. Identity in eval mode."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        r = (torch.rand_like(x) * 2 - 1) * self.beta
        return x + x * r

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class WeightedChannelDropout(nn.Module):
    """Weighted channel dropout (Hou & Wang 2019) on [B, C, H, W] maps after a ReLU.

    Per image: (1) rating: each channel's score s_c is its global average activation (as in
    squeeze-and-excitation); (2) weighted random selection: with r_c ~ U(0, 1), the
    round(keep_ratio * C) channels of largest key r_c^(1/s_c) are kept (Efraimidis & Spirakis 2006:
    weighted sampling without replacement, so a channel with a larger share of the activation is
    kept more often; a channel with s_c = 0 is never chosen over an active one); (3) random number
    test: only images whose u ~ U(0, 1) falls below rng_p are filtered, the others pass whole;
    (4) the kept channels are rescaled by sum_c s_c / sum_kept s_c, so the image's total activation
    is unchanged. The identity in eval mode. Written here because torch has no such layer.
    """

    def __init__(self, keep_ratio: float, rng_p: float) -> None:
        super().__init__()
        self.keep_ratio = keep_ratio
        self.rng_p = rng_p

    def keep_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """[B, C] float mask of the channels weighted random selection keeps, from [B, C] scores."""
        channels = scores.shape[1]
        kept = max(1, round(self.keep_ratio * channels))
        # log(r^(1/s)) = log(r) / s orders channels as r^(1/s) does without underflowing to 0;
        # the floors keep log(0) and a division by 0 finite (score 0 -> a very negative key).
        r = torch.rand_like(scores).clamp_min(torch.finfo(scores.dtype).tiny)
        keys = r.log() / scores.clamp_min(torch.finfo(scores.dtype).eps)
        chosen = keys.topk(kept, dim=1).indices
        return torch.zeros_like(scores).scatter_(1, chosen, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        scores = x.detach().float().mean(dim=(2, 3))
        mask = self.keep_mask(scores)
        filtered = torch.rand(len(x), 1, device=x.device) < self.rng_p
        mask = torch.where(filtered, mask, torch.ones_like(mask))
        kept_score = (mask * scores).sum(dim=1, keepdim=True)
        total = scores.sum(dim=1, keepdim=True)
        # An image with no activation at all keeps scale 1 (nothing to rescale).
        scale = torch.where(kept_score > 0, total / kept_score.clamp_min(1e-12),
                            torch.ones_like(total))
        return x * (mask * scale).to(x.dtype)[:, :, None, None]

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}, rng_p={self.rng_p}"


# The layer types the test-time probes treat as dropout (probes.py: variance shift).
DROPOUT_LAYERS = (nn.modules.dropout._DropoutNd, GaussianDropout, Uout, WeightedChannelDropout)


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
        options.dropout_placement = self.cfg.placement.value

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
                  f"(weighted channel dropout needs model=lenet, convnet, resnet, resnet18 or "
                  f"resnet34){self.after_bn_hint()}")
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
