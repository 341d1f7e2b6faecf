"""AutoAugment (Cubuk et al. 2019, "AutoAugment: Learning Augmentation Strategies from Data",
CVPR), with the policies it learned on CIFAR-10, SVHN and ImageNet.

A policy is 25 sub-policies of two steps (operation, probability, magnitude bin of 10). Each
training image draws its own sub-policy uniformly; each step happens with its probability, signed
magnitudes are negated with probability 1/2 (torchvision's v2.AutoAugment, per image here:
policy_ops.py says how and why).

Which policy on which images: none is refused. The three are sequences of operations that act on
any gray or RGB image, and the paper itself transfers them beyond the data they were learned on
(the ImageNet policy to fine-grained datasets). On gray images a Color step (saturation) does
nothing, logged once; the SVHN policy has none (shears, Invert, Equalize, Solarize...).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch

from regbench.regularizers.base import register_regularizer
from regbench.regularizers.policy_ops import (
    AUTOAUGMENT_OPS,
    Draws,
    Operation,
    PolicyRegularizer,
    random_signs,
)


class AutoAugmentPolicy(str, Enum):
    cifar10 = "cifar10"
    svhn = "svhn"
    imagenet = "imagenet"


# The learned policies (Cubuk et al. 2019, Appendix, as torchvision 0.29's AutoAugmentPolicy
# tables): one sub-policy per line, "operation probability bin" twice, "-" where the operation
# takes no magnitude.
POLICY_TABLES = {
    AutoAugmentPolicy.cifar10: """
        Invert 0.1 -, Contrast 0.2 6;       Rotate 0.7 2, TranslateX 0.3 9
        Sharpness 0.8 1, Sharpness 0.9 3;   ShearY 0.5 8, TranslateY 0.7 9
        AutoContrast 0.5 -, Equalize 0.9 -; ShearY 0.2 7, Posterize 0.3 7
        Color 0.4 3, Brightness 0.6 7;      Sharpness 0.3 9, Brightness 0.7 9
        Equalize 0.6 -, Equalize 0.5 -;     Contrast 0.6 7, Sharpness 0.6 5
        Color 0.7 7, TranslateX 0.5 8;      Equalize 0.3 -, AutoContrast 0.4 -
        TranslateY 0.4 3, Sharpness 0.2 6;  Brightness 0.9 6, Color 0.2 8
        Solarize 0.5 2, Invert 0.0 -;       Equalize 0.2 -, AutoContrast 0.6 -
        Equalize 0.2 -, Equalize 0.6 -;     Color 0.9 9, Equalize 0.6 -
        AutoContrast 0.8 -, Solarize 0.2 8; Brightness 0.1 3, Color 0.7 0
        Solarize 0.4 5, AutoContrast 0.9 -; TranslateY 0.9 9, TranslateY 0.7 9
        AutoContrast 0.9 -, Solarize 0.8 3; Equalize 0.8 -, Invert 0.1 -
        TranslateY 0.7 9, AutoContrast 0.9 -""",
    AutoAugmentPolicy.svhn: """
        ShearX 0.9 4, Invert 0.2 -;         ShearY 0.9 8, Invert 0.7 -
        Equalize 0.6 -, Solarize 0.6 6;     Invert 0.9 -, Equalize 0.6 -
        Equalize 0.6 -, Rotate 0.9 3;       ShearX 0.9 4, AutoContrast 0.8 -
        ShearY 0.9 8, Invert 0.4 -;         ShearY 0.9 5, Solarize 0.2 6
        Invert 0.9 -, AutoContrast 0.8 -;   Equalize 0.6 -, Rotate 0.9 3
        ShearX 0.9 4, Solarize 0.3 3;       ShearY 0.8 8, Invert 0.7 -
        Equalize 0.9 -, TranslateY 0.6 6;   Invert 0.9 -, Equalize 0.6 -
        Contrast 0.3 3, Rotate 0.8 4;       Invert 0.8 -, TranslateY 0.0 2
        ShearY 0.7 6, Solarize 0.4 8;       Invert 0.6 -, Rotate 0.8 4
        ShearY 0.3 7, TranslateX 0.9 3;     ShearX 0.1 6, Invert 0.6 -
        Solarize 0.7 2, TranslateY 0.6 7;   ShearY 0.8 4, Invert 0.8 -
        ShearX 0.7 9, TranslateY 0.8 3;     ShearY 0.8 5, AutoContrast 0.7 -
        ShearX 0.7 2, Invert 0.1 -""",
    AutoAugmentPolicy.imagenet: """
        Posterize 0.4 8, Rotate 0.6 9;      Solarize 0.6 5, AutoContrast 0.6 -
        Equalize 0.8 -, Equalize 0.6 -;     Posterize 0.6 7, Posterize 0.6 6
        Equalize 0.4 -, Solarize 0.2 4;     Equalize 0.4 -, Rotate 0.8 8
        Solarize 0.6 3, Equalize 0.6 -;     Posterize 0.8 5, Equalize 1.0 -
        Rotate 0.2 3, Solarize 0.6 8;       Equalize 0.6 -, Posterize 0.4 6
        Rotate 0.8 8, Color 0.4 0;          Rotate 0.4 9, Equalize 0.6 -
        Equalize 0.0 -, Equalize 0.8 -;     Invert 0.6 -, Equalize 1.0 -
        Color 0.6 4, Contrast 1.0 8;        Rotate 0.8 8, Color 1.0 2
        Color 0.8 8, Solarize 0.8 7;        Sharpness 0.4 7, Invert 0.6 -
        ShearX 0.6 5, Equalize 1.0 -;       Color 0.4 0, Equalize 0.6 -
        Equalize 0.4 -, Solarize 0.2 4;     Solarize 0.6 5, AutoContrast 0.6 -
        Invert 0.6 -, Equalize 1.0 -;       Color 0.6 4, Contrast 1.0 8
        Equalize 0.8 -, Equalize 0.6 -""",
}

Step = tuple[str, float, Optional[int]]  # operation, probability, magnitude bin


def sub_policies(policy: AutoAugmentPolicy) -> list[tuple[Step, Step]]:
    """The policy's 25 sub-policies, parsed from POLICY_TABLES."""
    parsed = []
    for text in POLICY_TABLES[policy].replace("\n", ";").split(";"):
        if text.strip():
            steps = [step.split() for step in text.split(",")]
            parsed.append(tuple((name, float(p), None if b == "-" else int(b))
                                for name, p, b in steps))
    return parsed


@dataclass
class AutoAugmentConfig:
    # The CIFAR-10 policy by default: regbench's datasets are small images like CIFAR-10's
    # (torchvision's default is the ImageNet policy, for 224 px photographs).
    policy: AutoAugmentPolicy = AutoAugmentPolicy.cifar10


@dataclass
class PolicyTensors:
    """A policy as tensors [sub-policies, 2]: operation indices into the usable operations (-1:
    not usable on these images), probabilities, magnitude bins (0 where there is none)."""

    ops: torch.Tensor
    probabilities: torch.Tensor
    bins: torch.Tensor

    @classmethod
    def of(cls, policy: AutoAugmentPolicy, usable: tuple[Operation, ...]) -> "PolicyTensors":
        names = [op.name for op in usable]
        steps = sub_policies(policy)
        return cls(
            torch.tensor([[names.index(n) if n in names else -1 for n, _, _ in s] for s in steps]),
            torch.tensor([[p for _, p, _ in s] for s in steps]),
            torch.tensor([[b or 0 for _, _, b in s] for s in steps]))


def autoaugment_draws(batch: int, policy: PolicyTensors) -> tuple[torch.Tensor, list[Draws]]:
    """A sub-policy uniform over the policy's for each of ``batch`` images, and its two steps:
    each step's operation where it happens (with its probability), -1 where it does not."""
    chosen = torch.randint(len(policy.ops), (batch,))
    steps = []
    for step in range(2):
        happens = torch.rand(batch) < policy.probabilities[chosen, step]
        steps.append(Draws(torch.where(happens, policy.ops[chosen, step], -1),
                           policy.bins[chosen, step], random_signs((batch,))))
    return chosen, steps


@register_regularizer("autoaugment", AutoAugmentConfig)
class AutoAugment(PolicyRegularizer):
    ops = AUTOAUGMENT_OPS
    # AutoAugment's magnitudes: 10 uniformly spaced values per operation (Cubuk et al. 2019, the
    # search space; torchvision's AutoAugment uses the same 10 bins).
    num_bins = 10

    def __init__(self, cfg: AutoAugmentConfig) -> None:
        super().__init__(cfg)
        # The policy indexed into the operations of the table it was made for.
        self.policy: Optional[PolicyTensors] = None
        self.policy_ops: tuple[Operation, ...] = ()

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        table = self.table(images)
        if table.ops is not self.policy_ops:
            self.policy, self.policy_ops = PolicyTensors.of(self.cfg.policy, table.ops), table.ops
        for draws in autoaugment_draws(len(images), self.policy)[1]:
            images = table.apply(images, draws)
        return images
