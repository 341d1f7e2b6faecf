"""CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with
Localizable Features", ICCV).

A random box of each training image is replaced by the same box of a partner image; the targets
are mixed in proportion to the areas, y~ = lam * y_i + (1 - lam) * y_j with lam = 1 - box area /
image area. The box is drawn from lam ~ Beta(alpha, alpha): centre uniform, sides sqrt(1 - lam)
times the image's, clipped at the border (lam is then recomputed from the clipped box), one box
and one lam per batch, as in the paper's reference code and timm.

This is torchvision's ``transforms.v2.CutMix`` on the whole batch on the training device (partners
by ``roll(1)`` of the shuffled batch); it pastes pixels, so it works on the uint8 batch directly.
The reference code applies CutMix to a batch with probability ``cutmix_prob`` (0.5 in its CIFAR
runs, 1.0 on ImageNet); here it is every batch, the ImageNet setting.
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
class CutMixConfig:
    # lam ~ Beta(alpha, alpha); Yun et al. 2019 use alpha = 1 (lam uniform on [0, 1]) on ImageNet
    # and CIFAR (§4.1).
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check(self.alpha > 0, "regularizer.cutmix.alpha", self.alpha, "a number > 0")


@register_regularizer("cutmix", CutMixConfig)
class CutMix(Regularizer):
    def __init__(self, cfg: CutMixConfig) -> None:
        super().__init__(cfg)
        self.mix: v2.CutMix | None = None  # needs the class count, known in setup()

    def setup(self, context: RunContext) -> None:
        from torchvision.transforms import v2

        self.mix = v2.CutMix(alpha=self.cfg.alpha, num_classes=context.num_classes)

    def transform_batch(self, images: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mix(images, labels)
