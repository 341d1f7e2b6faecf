"""Synthetic out-of-distribution sets of Outlier Exposure (Hendrycks et al. 2019; their
``CIFAR/test.py``): Gaussian, uniform and Rademacher noise, and blobs, as uint8 images
[N, C, H, W] of any shape, drawn from a seed (the same seed gives the same images on every device).

OE builds each set on [-1, 1] and feeds it to the network without the dataset's normalization.
regbench's models take uint8 pixels that are normalized like every image, so each set here is OE's
construction mapped to [0, 1] by (x + 1) / 2 and rounded to bytes; the network then sees it
through the in-distribution mean and std, as it would see a real OOD dataset.

- ``gaussian``: OE's N(0, 0.5^2) clipped to [-1, 1] is N(0.5, 0.25^2) clipped to [0, 1].
- ``uniform``: OE's U[-1, 1] (its validation set); here uniform over the 256 byte values.
- ``rademacher``: OE's +-1 with probability 1/2 each: black or white, per element.
- ``blobs``: Bernoulli(0.7) per element, Gaussian blur of sigma 1.5 over the whole H x W x C volume
  (OE calls ``skimage.filters.gaussian(multichannel=False)``: the channels are blurred into each
  other too; edges 'nearest', kernel truncated at 4 sigma), values below 0.75 set to 0. A pixel is
  black or in [0.75, 1] (191..255): bright regions on black.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from regbench.config import check

# OE's constructions (CIFAR/test.py), on its [-1, 1] scale.
GAUSSIAN_STD = 0.5
BLOB_DENSITY = 0.7  # Bernoulli probability before the blur
# In pixels along every axis, whatever the image size: a larger sigma would not give larger blobs
# of the same look, since the blurred values would vary less and fewer would reach the threshold
# (at 64x64 with 3 px, 6 % of the pixels instead of 21 %). On large images (224x224) blobs are a
# fine texture of bright regions of ~17 pixels, as on OE's 32x32 ones.
BLOB_SIGMA = 1.5
BLOB_THRESHOLD = 0.75  # blurred values below it become black
BLOB_TRUNCATE = 4.0  # skimage's (scipy.ndimage's) default kernel radius, in sigmas

Shape = tuple[int, int, int]


def to_bytes(unit_values: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats (clipped) -> uint8 0..255, rounded to the nearest byte. Overwrites its
    argument: the sets are large (CIFAR-sized: 30 M values) and it is a temporary of theirs."""
    return unit_values.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def gaussian_images(count: int, shape: Shape, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn((count, *shape), generator=generator)
    return to_bytes(noise.mul_(GAUSSIAN_STD / 2).add_(0.5))  # OE's N(0, 0.5^2) on [-1, 1], halved


def uniform_images(count: int, shape: Shape, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.uint8)


def rademacher_images(count: int, shape: Shape, generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, (count, *shape), generator=generator, dtype=torch.uint8)
    return signs * 255


def blobs_from(mask: torch.Tensor) -> torch.Tensor:
    """OE's blur and threshold of a float32 [N, C, H, W] 0/1 mask, on all images at once.

    scipy's gaussian_filter is skimage.filters.gaussian's own filter; sigma 0 along the batch
    axis leaves the images independent. (torchvision's gaussian_blur pads by reflection and blurs
    H x W only, not OE's 'nearest' edges across the channels.)
    """
    from scipy.ndimage import gaussian_filter

    sigmas = (0.0, BLOB_SIGMA, BLOB_SIGMA, BLOB_SIGMA)
    blurred = torch.from_numpy(gaussian_filter(mask.numpy(), sigma=sigmas, mode="nearest",
                                               truncate=BLOB_TRUNCATE))
    return to_bytes(blurred.masked_fill_(blurred < BLOB_THRESHOLD, 0.0))


def blob_images(count: int, shape: Shape, generator: torch.Generator) -> torch.Tensor:
    # u < p for u ~ U[0, 1) is Bernoulli(p), and cheaper than torch.bernoulli on a tensor of p.
    mask = torch.rand((count, *shape), generator=generator) < BLOB_DENSITY
    return blobs_from(mask.float())


SYNTHETIC_OOD_SETS: dict[str, Callable[[int, Shape, torch.Generator], torch.Tensor]] = {
    "gaussian": gaussian_images,
    "uniform": uniform_images,
    "rademacher": rademacher_images,
    "blobs": blob_images,
}


def synthetic_ood_images(name: str, count: int, shape: Shape, seed: int) -> torch.Tensor:
    """``count`` uint8 images [count, C, H, W] of the set ``name``, on the CPU, the same for the
    same seed. A run passes its test split's size and image shape (C, H, W)."""
    check(name in SYNTHETIC_OOD_SETS, "evaluation.ood", name,
          f"a synthetic set: {', '.join(SYNTHETIC_OOD_SETS)}")
    if count < 1 or len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"expected count >= 1 and an image shape (C, H, W) of positive sizes; "
                         f"got count={count}, shape={tuple(shape)}")
    generator = torch.Generator().manual_seed(seed)
    return SYNTHETIC_OOD_SETS[name](count, tuple(shape), generator)
