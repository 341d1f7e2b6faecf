"""The explicit baseline: no regularization at all."""

from __future__ import annotations

from dataclasses import dataclass

from regbench.regularizers.base import Regularizer, register_regularizer


@dataclass
class NoneConfig:
    pass


@register_regularizer("none", NoneConfig)
class NoRegularizer(Regularizer):
    pass
