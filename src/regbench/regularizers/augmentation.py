"""Data augmentation of training batches: random crops after zero padding, and horizontal flips.

A random crop of the original size from an image zero-padded by P pixels is the same thing as a
random translation by up to P pixels each way with zero fill, so one operation serves both the
"pad and crop" of natural images and the small shifts of digits.

It runs on whole uint8 batches on the training device (``transform_batch``, training data only).
torchvision's v2 transforms, given a batched tensor, draw ONE crop offset and ONE flip decision for
the whole batch (checked with torchvision 0.29: every image of a RandomCrop/RandomHorizontalFlip
output batch is identical), which is not augmentation per example. So the offsets and flips are
drawn per image here, and applied without a Python loop: padding with torchvision's ``pad``, the
crops as two ``gather``s of per-image row/column windows, the flips with ``torch.where``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch

from regbench.config import ConfigError, check
from regbench.regularizers.base import Regularizer, RunContext, register_regularizer


class AugmentationMode(str, Enum):
    auto = "auto"  # from the dataset (AUTO_MODES)
    crop_flip = "crop_flip"  # natural images, clothing: pad 1/8 of the size, random crop, flips
    shift = "shift"  # digits: shifts of up to 1/14 of the size, no flips


# crop_flip: 4 px of padding on 32 px CIFAR and random flips (He et al. 2016 §4.2); the same
# RandomCrop(28, padding=4) + flips is the Fashion-MNIST recipe of Zhong et al. 2020 (Random
# Erasing, fashionmnist.py). shift: 2 px on 28 px MNIST (Sabour et al. 2017: "shifted by up to 2
# pixels in each direction with zero padding"), 1 px on the 8 px digits; no flips, since
# handwritten digits are not mirror-symmetric (a mirrored 2 or 7 is no digit), whereas a mirrored
# shirt or shoe is still a shirt or a shoe.
PADDING_FRACTION = {AugmentationMode.crop_flip: 1 / 8, AugmentationMode.shift: 1 / 14}
FLIPS = {AugmentationMode.crop_flip: True, AugmentationMode.shift: False}
AUTO_MODES = {
    "cifar10": AugmentationMode.crop_flip, "cifar100": AugmentationMode.crop_flip,
    "pets": AugmentationMode.crop_flip, "imagefolder": AugmentationMode.crop_flip,
    "fashion_mnist": AugmentationMode.crop_flip,
    "digits": AugmentationMode.shift, "mnist": AugmentationMode.shift,
}


@dataclass
class AugmentationConfig:
    # auto: crop_flip for cifar10/100, pets, imagefolder and fashion_mnist, shift for digits and
    # mnist; or crop_flip/shift explicitly.
    mode: AugmentationMode = AugmentationMode.auto
    # Zero padding before the random crop = the largest shift, in pixels. null: the mode's share of
    # the image size, at least 1 px (crop_flip 1/8: 4 px on 32 and 28 px, He et al. 2016, Zhong et
    # al. 2020; shift 1/14: 2 px on 28 px, Sabour et al. 2017).
    crop_padding: Optional[int] = None
    # Random horizontal flips (probability 0.5). null: the mode's choice.
    hflip: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.crop_padding is not None:
            check(self.crop_padding >= 0, "regularizer.augmentation.crop_padding",
                  self.crop_padding, "an integer >= 0, or null for the mode's padding")


def random_crops(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image of a [B, C, H, W] batch zero-padded by ``padding`` and cropped back to H x W at
    its own uniformly random offset."""
    from torchvision.transforms.v2 import (
        functional as TF,  # see DEVELOPERS.md, "Start-up"
    )

    if padding == 0:
        return images
    batch, channels, height, width = images.shape
    padded = TF.pad(images, [padding], fill=0)
    offsets = torch.randint(0, 2 * padding + 1, (2, batch, 1), device=images.device)
    rows = offsets[0] + torch.arange(height, device=images.device)  # [B, H]
    cols = offsets[1] + torch.arange(width, device=images.device)  # [B, W]
    # Row window first (all padded columns kept), then the column window of those rows.
    row_index = rows.view(batch, 1, height, 1).expand(-1, channels, -1, padded.shape[-1])
    col_index = cols.view(batch, 1, 1, width).expand(-1, channels, height, -1)
    return padded.gather(2, row_index).gather(3, col_index)


def random_hflips(images: torch.Tensor) -> torch.Tensor:
    """Each image of a [B, C, H, W] batch mirrored left-right with probability 0.5."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def mode_for(dataset: str) -> AugmentationMode:
    if dataset not in AUTO_MODES:
        raise ConfigError(f"regularizer.augmentation.mode=auto has no default for dataset "
                          f"{dataset!r}; set mode to crop_flip or shift")
    return AUTO_MODES[dataset]


@register_regularizer("augmentation", AugmentationConfig)
class Augmentation(Regularizer):
    def __init__(self, cfg: AugmentationConfig) -> None:
        super().__init__(cfg)
        self.mode = cfg.mode

    def setup(self, context: RunContext) -> None:
        if self.cfg.mode == AugmentationMode.auto:
            self.mode = mode_for(context.dataset)
        check(self.cfg.crop_padding != 0 or self.flips(), "regularizer.augmentation.crop_padding",
              0, "> 0 when there are no flips (hflip=false or mode=shift): nothing would change")

    def padding(self, image_size: int) -> int:
        if self.cfg.crop_padding is not None:
            return self.cfg.crop_padding
        return max(1, round(image_size * PADDING_FRACTION[self.mode]))

    def flips(self) -> bool:
        return FLIPS[self.mode] if self.cfg.hflip is None else self.cfg.hflip

    def transform_batch(self, images: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = random_crops(images, self.padding(min(images.shape[-2:])))
        if self.flips():
            images = random_hflips(images)
        return images, labels
