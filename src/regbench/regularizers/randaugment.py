"""RandAugment (Cubuk et al. 2020, "RandAugment: Practical automated data augmentation with a
reduced search space", CVPR Workshops).

Each training image goes through ``num_ops`` operations one after another, each drawn uniformly
(with replacement) from 14 (Identity, ShearX/Y, TranslateX/Y, Rotate, Brightness, Color, Contrast,
Sharpness, Posterize, Solarize, AutoContrast, Equalize: torchvision's RandAugment space), all at
the one magnitude bin ``magnitude`` of ``num_magnitude_bins``, signed operations negated with
probability 1/2. Every image draws its own operations and signs (policy_ops.py says how and why);
on gray images Color is left out of the draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from regbench.config import check
from regbench.regularizers.base import register_regularizer
from regbench.regularizers.policy_ops import (
    RANDAUGMENT_OPS,
    Draws,
    PolicyRegularizer,
    random_signs,
)


@dataclass
class RandAugmentConfig:
    # N = 2 operations at magnitude M = 9 of a 0-30 scale (31 bins): torchvision's RandAugment
    # defaults (num_ops, magnitude, num_magnitude_bins). N = 2, M = 9 is the paper's setting for
    # ResNet-50 on ImageNet (Cubuk et al. 2020); on torchvision's 31 bins M = 9 is 30 % of each
    # operation's range (rotation 9 degrees, shear 0.09, translation 150/331 * 0.3 of the size).
    num_ops: int = 2
    magnitude: int = 9
    num_magnitude_bins: int = 31

    def __post_init__(self) -> None:
        check(self.num_ops >= 1, "regularizer.randaugment.num_ops", self.num_ops,
              "an integer >= 1 (0 would leave every image as it is)")
        check(self.num_magnitude_bins >= 2, "regularizer.randaugment.num_magnitude_bins",
              self.num_magnitude_bins, "an integer >= 2")
        check(0 <= self.magnitude < self.num_magnitude_bins, "regularizer.randaugment.magnitude",
              self.magnitude, f"an integer from 0 to {self.num_magnitude_bins - 1} "
                              f"(num_magnitude_bins - 1)")


def randaugment_draws(batch: int, num_ops: int, num_choices: int, magnitude: int) -> list[Draws]:
    """``num_ops`` steps for each of ``batch`` images: an operation index uniform over
    ``num_choices`` per image and step, always the bin ``magnitude``, random signs."""
    return [Draws(torch.randint(num_choices, (batch,)), torch.full((batch,), magnitude),
                  random_signs((batch,))) for _ in range(num_ops)]


@register_regularizer("randaugment", RandAugmentConfig)
class RandAugment(PolicyRegularizer):
    ops = RANDAUGMENT_OPS

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        table = self.table(images)
        for draws in randaugment_draws(len(images), self.cfg.num_ops, len(table.ops),
                                       self.cfg.magnitude):
            images = table.apply(images, draws)
        return images
