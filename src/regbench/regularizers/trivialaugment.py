"""TrivialAugment (Müller & Hutter 2021, "TrivialAugment: Tuning-free Yet State-of-the-Art Data
Augmentation", ICCV), the wide search space (TrivialAugment Wide).

Each training image goes through ONE operation drawn uniformly from 14 (torchvision's
TrivialAugmentWide space: Identity, ShearX/Y up to 0.99, TranslateX/Y, Rotate up to 135 degrees,
Brightness/Color/Contrast/Sharpness factors 1 +- 0.99, Posterize to 8-2 bits, Solarize,
AutoContrast, Equalize) at a magnitude bin drawn uniformly from ``num_magnitude_bins``, signed
operations negated with probability 1/2. Every image draws its own (policy_ops.py says how and
why, and how translations scale with the image); on gray images Color is left out of the draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from regbench.config import check
from regbench.regularizers.base import register_regularizer
from regbench.regularizers.policy_ops import (
    TRIVIALAUGMENT_WIDE_OPS,
    Draws,
    PolicyRegularizer,
    random_signs,
)


@dataclass
class TrivialAugmentConfig:
    # Magnitudes on 31 bins: torchvision's TrivialAugmentWide default, the paper's strengths
    # 0, 1, ..., 30 drawn uniformly (Müller & Hutter 2021).
    num_magnitude_bins: int = 31

    def __post_init__(self) -> None:
        check(self.num_magnitude_bins >= 2, "regularizer.trivialaugment.num_magnitude_bins",
              self.num_magnitude_bins, "an integer >= 2")


def trivialaugment_draws(batch: int, num_choices: int, num_bins: int) -> Draws:
    """One step for each of ``batch`` images: an operation uniform over ``num_choices`` and a
    magnitude bin uniform over ``num_bins``, each image its own, random signs."""
    return Draws(torch.randint(num_choices, (batch,)), torch.randint(num_bins, (batch,)),
                 random_signs((batch,)))


@register_regularizer("trivialaugment", TrivialAugmentConfig)
class TrivialAugment(PolicyRegularizer):
    ops = TRIVIALAUGMENT_WIDE_OPS

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        table = self.table(images)
        return table.apply(images, trivialaugment_draws(len(images), len(table.ops), self.num_bins))
