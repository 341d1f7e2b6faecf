"""Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", ICLR).

Each training batch becomes x~ = lam * x_i + (1 - lam) * x_j with soft targets
y~ = lam * y_i + (1 - lam) * y_j, one lam ~ Beta(alpha, alpha) per batch and x_j a partner drawn
from the same (shuffled) batch, as in the paper's reference code and timm's default.

This is torchvision's ``transforms.v2.MixUp`` on the whole batch on the training device: one lam
per batch, partners by ``roll(1)`` of the batch (a random pairing, since training batches are
shuffled), one-hot targets mixed with the same lam. It needs float images (on uint8 its in-place
``mul_`` fails: "result type Float can't be cast to ... Byte", torchvision 0.29), so the uint8
batch is converted to float in [0, 1] first, which the training loop normalizes like uint8 images
(normalization is affine, so mixing before or after it is the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from regbench.config import check
from regbench.regularizers.base import Regularizer, RunContext, register_regularizer

if TYPE_CHECKING:  # see DEVELOPERS.md, "Start-up"
    from torchvision.transforms import v2


@dataclass
class MixupConfig:
    # lam ~ Beta(alpha, alpha). 1.0 (lam uniform on [0, 1]) is Zhang et al. 2018's CIFAR-10/100
    # setting (§3.2); they used 0.2 on ImageNet (§3.1: alpha in [0.1, 0.4] helps there, larger
    # alpha underfits).
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check(self.alpha > 0, "regularizer.mixup.alpha", self.alpha, "a number > 0")


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float images as they are."""
    from torchvision.transforms.v2 import functional as TF

    return images if images.is_floating_point() else TF.to_dtype(images, torch.float32, scale=True)


@register_regularizer("mixup", MixupConfig)
class Mixup(Regularizer):
    def __init__(self, cfg: MixupConfig) -> None:
        super().__init__(cfg)
        self.mix: v2.MixUp | None = None  # needs the class count, known in setup()

    def setup(self, context: RunContext) -> None:
        from torchvision.transforms import v2

        self.mix = v2.MixUp(alpha=self.cfg.alpha, num_classes=context.num_classes)

    def transform_batch(self, images: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Labels may already be soft (after CutMix): MixUp mixes [B, K] targets as they are.
        return self.mix(to_float_images(images), labels)
