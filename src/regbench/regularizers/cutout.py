"""Cutout (DeVries & Taylor 2017, "Improved Regularization of Convolutional Neural Networks with
Cutout", arXiv:1708.04552).

Every training image gets one square hole: its centre uniform over the whole image, the square
clipped where it crosses the border (so a hole near an edge erases less), as in the authors' code
(uoguelph-mlrg/Cutout util/cutout.py: one hole, rows y - size//2 to y + size//2, clipped). The
hole's side is ``size`` pixels (the same for odd sizes, where the authors' code gives size - 1).

Per image, on whole batches, by hand: each image draws its own centre, and the holes are one
boolean [B, H, W] mask from the per-image coordinates (random_erasing.py's ``rectangle_masks``:
torchvision's ``RandomErasing`` draws one rectangle per call and ``TF.erase`` takes one per call).
The fill is random_erasing.py's: by default each channel's batch mean, which is 0 after the
training loop's normalization, where the authors zero the normalized image (see random_erasing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from regbench.config import check
from regbench.regularizers.base import Regularizer, register_regularizer
from regbench.regularizers.random_erasing import (
    ErasingFill,
    Rectangles,
    erase,
    rectangle_masks,
)

PREFIX = "regularizer.cutout"
# DeVries & Taylor 2017: a 16 px hole on 32 px CIFAR-10, half the image's side (their README: 8 px
# for CIFAR-100, 20 px for 32 px SVHN; set size for those).
SIZE_FRACTION = 1 / 2


@dataclass
class CutoutConfig:
    # Side of the square hole in pixels; null: half the image's shorter side (16 on 32 px CIFAR,
    # 14 on 28 px MNIST, 4 on the 8 px digits).
    size: Optional[int] = None
    # mean: 0 after normalization, where the authors erase (see random_erasing.py).
    fill: ErasingFill = ErasingFill.mean

    def __post_init__(self) -> None:
        if self.size is not None:
            check(self.size >= 1, f"{PREFIX}.size", self.size,
                  "an integer >= 1 (pixels), or null for half the image's side")


def hole_size(cfg: CutoutConfig, height: int, width: int) -> int:
    if cfg.size is not None:
        return cfg.size
    return max(1, round(min(height, width) * SIZE_FRACTION))


def random_centres(batch: int, height: int, width: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) int64 [B]: each image's hole centre, uniform over the whole image."""
    return (torch.randint(0, height, (batch,), device=device),
            torch.randint(0, width, (batch,), device=device))


def squares_at(centre_row: torch.Tensor, centre_col: torch.Tensor, size: int) -> Rectangles:
    """size x size squares around the given centres, unclipped (the masks clip them)."""
    sides = torch.full_like(centre_row, size)
    every = torch.ones_like(centre_row, dtype=torch.bool)
    return Rectangles(centre_row - size // 2, centre_col - size // 2, sides, sides, every)


@register_regularizer("cutout", CutoutConfig)
class Cutout(Regularizer):
    def transform_batch(self, images: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = images.shape
        rows, cols = random_centres(batch, height, width, images.device)
        squares = squares_at(rows, cols, hole_size(self.cfg, height, width))
        return erase(images, rectangle_masks(squares, height, width), self.cfg.fill), labels
