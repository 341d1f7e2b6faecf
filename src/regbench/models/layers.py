"""Dropout layers torch lacks: Gaussian dropout, Uout and weighted channel dropout.

The dropout regularizer (regularizers/dropout.py) builds them into a model through
``ModelOptions.dropout``; ``DROPOUT_LAYERS`` names every layer type that counts as dropout, for the
test-time probes (run/probes.py: variance shift). Layers, not regularizers, so that measuring a
model needs no regularizer.
"""

from __future__ import annotations

import math

import torch
from torch import nn


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
