"""Random Erasing (Zhong et al. 2020, "Random Erasing Data Augmentation", AAAI).

With probability p a training image gets one rectangle erased: its area a random fraction of the
image's (uniform in ``scale``), its aspect ratio h/w log-uniform in ``ratio``, placed uniformly
where it fits; up to 10 draws per image until one fits, else the image stays as it is. This is the
sampling of torchvision's ``transforms.v2.RandomErasing`` (h = round(sqrt(area * ratio)),
w = round(sqrt(area / ratio)), kept when h < H and w < W).

Per image, on whole batches, by hand: torchvision's v2 transforms draw their parameters once per
call, so ``RandomErasing`` on a batch erases the same rectangle in every image (or in none), and
``TF.erase`` takes one rectangle per call, which would mean a Python loop over the images. Here
every image draws its own rectangles and coin at once, and one boolean [B, H, W] mask built from
the per-image coordinates by broadcasting (``rectangle_masks``) erases the whole batch in one
``torch.where``. ``cutout.py`` uses the same masks and fills.

What the erased pixels become (``fill``). The sources erase after normalization: Cutout multiplies
the normalized image by a 0/1 mask (uoguelph-mlrg/Cutout util/cutout.py, after Normalize in
train.py), torchvision's reference recipe puts ``RandomErasing(value=0)`` after Normalize
(references/classification/presets.py), so the erased pixels are the dataset's mean colour.
regbench erases uint8 (or [0, 1] float) batches before the training loop normalizes them
(``Run.prepare``), where 0 is black, not the mean. So the default fill is the per-channel mean of
the batch's pixels (the dataset's mean/std are the training split's statistics, of which the
batch mean is an estimate): after normalization the erased pixels are close to 0, as in the
sources. ``zero`` erases to black (0); ``random`` fills each pixel with N(mean, std) noise of the
batch's channel statistics, which is N(0, 1) after normalization (torchvision's value='random',
timm's mode 'pixel'), clipped to the pixel range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import torch

from regbench.config import check
from regbench.regularizers.base import Regularizer, register_regularizer

PREFIX = "regularizer.random_erasing"
# Draws per image before giving up: torchvision v2 RandomErasing's ``for _ in range(10)``.
ATTEMPTS = 10


class ErasingFill(str, Enum):
    mean = "mean"  # the batch's per-channel mean: ~0 after normalization, as the sources erase
    zero = "zero"  # black
    random = "random"  # per-pixel N(mean, std) of the batch's channels: N(0, 1) after normalization


@dataclass
class RandomErasingConfig:
    # Zhong et al. 2020's defaults, as torchvision's RandomErasing: erasing probability 0.5, area
    # fraction in [0.02, 0.33], aspect ratio h/w in [0.3, 3.3] (1/0.3).
    p: float = 0.5
    scale: list[float] = field(default_factory=lambda: [0.02, 0.33])
    ratio: list[float] = field(default_factory=lambda: [0.3, 3.3])
    # mean: 0 after normalization, where the sources erase (see the module docstring).
    fill: ErasingFill = ErasingFill.mean

    def __post_init__(self) -> None:
        check(0 <= self.p <= 1, f"{PREFIX}.p", self.p, "a probability in [0, 1]")
        scale, ratio = list(self.scale), list(self.ratio)
        check(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, f"{PREFIX}.scale", scale,
              "[low, high] area fractions with 0 < low <= high <= 1")
        check(len(ratio) == 2 and 0 < ratio[0] <= ratio[1], f"{PREFIX}.ratio", ratio,
              "[low, high] aspect ratios h/w with 0 < low <= high")


@dataclass
class Rectangles:
    """One rectangle per image of a batch (int64 [B] each); images with ``erase`` False keep all
    their pixels."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    erase: torch.Tensor  # bool [B]


def erasing_rectangles(batch: int, height: int, width: int, cfg: RandomErasingConfig,
                       device: torch.device) -> Rectangles:
    """Random Erasing's rectangle for each of ``batch`` images of height x width: ATTEMPTS draws
    per image at once, the first that fits is kept (torchvision's loop, vectorized)."""
    shape = (batch, ATTEMPTS)
    low, high = cfg.scale
    area = height * width * (low + (high - low) * torch.rand(shape, device=device))
    log_low, log_high = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    ratio = torch.exp(log_low + (log_high - log_low) * torch.rand(shape, device=device))
    heights = torch.round(torch.sqrt(area * ratio)).long()
    widths = torch.round(torch.sqrt(area / ratio)).long()
    fits = (heights < height) & (widths < width)
    first = fits.long().argmax(dim=1, keepdim=True)  # argmax gives the first fitting draw
    rect_height = heights.gather(1, first).squeeze(1)
    rect_width = widths.gather(1, first).squeeze(1)
    erase = fits.any(dim=1) & (torch.rand(batch, device=device) < cfg.p)
    top = (torch.rand(batch, device=device) * (height - rect_height + 1)).long()
    left = (torch.rand(batch, device=device) * (width - rect_width + 1)).long()
    return Rectangles(top, left, rect_height, rect_width, erase)


def rectangle_masks(rects: Rectangles, height: int, width: int) -> torch.Tensor:
    """bool [B, H, W]: True inside each image's rectangle (clipped at the border), nowhere for
    images not erased."""
    rows = torch.arange(height, device=rects.top.device)
    cols = torch.arange(width, device=rects.top.device)
    in_rows = (rows >= rects.top[:, None]) & (rows < (rects.top + rects.height)[:, None])
    in_cols = (cols >= rects.left[:, None]) & (cols < (rects.left + rects.width)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :] & rects.erase[:, None, None]


def fill_values(images: torch.Tensor, fill: ErasingFill) -> torch.Tensor:
    """What erased pixels become, broadcastable to ``images`` [B, C, H, W] and of its dtype: 0,
    each channel's mean over the batch, or per-pixel noise with the channels' mean and std."""
    if fill == ErasingFill.zero:
        return torch.zeros((), dtype=images.dtype, device=images.device)
    pixels = images.float()
    mean = pixels.mean(dim=(0, 2, 3), keepdim=True)
    values = mean
    if fill == ErasingFill.random:
        std = pixels.std(dim=(0, 2, 3), keepdim=True)
        values = mean + std * torch.randn_like(pixels)
    if images.is_floating_point():  # [0, 1] images (after mixup or CutMix)
        return values.clamp(0, 1).to(images.dtype)
    return values.round().clamp(0, torch.iinfo(images.dtype).max).to(images.dtype)


def erase(images: torch.Tensor, masks: torch.Tensor, fill: ErasingFill) -> torch.Tensor:
    """``images`` [B, C, H, W] with the pixels under ``masks`` [B, H, W] (all channels) filled."""
    return torch.where(masks[:, None], fill_values(images, fill), images)


@register_regularizer("random_erasing", RandomErasingConfig)
class RandomErasing(Regularizer):
    def transform_batch(self, images: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = images.shape
        rects = erasing_rectangles(batch, height, width, self.cfg, images.device)
        return erase(images, rectangle_masks(rects, height, width), self.cfg.fill), labels
