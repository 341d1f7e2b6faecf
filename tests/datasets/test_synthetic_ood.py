"""Outlier Exposure's synthetic OOD sets (datasets/synthetic_ood.py): their pixel statistics at a
fixed seed against the exact distributions (scipy.stats), blobs against OE's per-image blur
(scipy.ndimage, which skimage.filters.gaussian calls), shapes, dtype and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from regbench.config import ConfigError
from regbench.datasets.synthetic_ood import (
    SYNTHETIC_OOD_SETS,
    blobs_from,
    synthetic_ood_images,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 5, 7)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(SYNTHETIC_OOD_SETS))
def test_every_set_is_uint8_images_of_the_asked_shape(name, shape):
    images = synthetic_ood_images(name, 6, shape, seed=0)
    assert images.dtype == torch.uint8 and images.shape == (6, *shape)
    assert images.device.type == "cpu"


@pytest.mark.parametrize("name", list(SYNTHETIC_OOD_SETS))
def test_the_same_seed_gives_the_same_images_and_another_seed_others(name):
    first = synthetic_ood_images(name, 20, (3, 16, 16), seed=7)
    assert torch.equal(first, synthetic_ood_images(name, 20, (3, 16, 16), seed=7))
    assert not torch.equal(first, synthetic_ood_images(name, 20, (3, 16, 16), seed=8))


def byte_counts(images: torch.Tensor) -> np.ndarray:
    return np.bincount(images.flatten().numpy(), minlength=256)


def test_gaussian_pixels_follow_oe_normal_clipped_and_rounded():
    # OE: N(0, 0.5^2) on [-1, 1], clipped. On [0, 1]: N(0.5, 0.25^2); byte k holds the values
    # rounding to it, (k - 1/2)/255 .. (k + 1/2)/255, with the clipped tails in bytes 0 and 255.
    counts = byte_counts(synthetic_ood_images("gaussian", 100, (3, 32, 32), seed=0))
    edges = (np.arange(257) - 0.5) / 255
    cdf = stats.norm.cdf(edges, loc=0.5, scale=0.25)
    cdf[0], cdf[-1] = 0.0, 1.0
    expected = np.diff(cdf) * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    # The clipped tails: P(X < 0.5/255) = Phi(-1.992) ~ 2.3 % of the pixels are black.
    assert counts[0] / counts.sum() == pytest.approx(stats.norm.cdf((0.5 / 255 - 0.5) / 0.25),
                                                     abs=1e-3)


def test_uniform_pixels_take_every_byte_value_equally_often():
    counts = byte_counts(synthetic_ood_images("uniform", 100, (3, 32, 32), seed=0))
    assert stats.chisquare(counts).pvalue > 1e-3


def test_rademacher_pixels_are_black_or_white_with_probability_one_half():
    counts = byte_counts(synthetic_ood_images("rademacher", 100, (3, 32, 32), seed=0))
    assert counts[0] + counts[255] == counts.sum()
    assert stats.binomtest(int(counts[255]), int(counts.sum()), 0.5).pvalue > 1e-3


def oe_blobs_of_one_image(mask_chw: np.ndarray) -> np.ndarray:
    """OE's loop body on one image: skimage.filters.gaussian(HxWxC, sigma=1.5,
    multichannel=False), i.e. scipy's filter over the 3-D volume with edges 'nearest' and
    truncate 4; then values below 0.75 set to 0."""
    volume = mask_chw.transpose(1, 2, 0)
    blurred = ndimage.gaussian_filter(volume, sigma=1.5, mode="nearest", truncate=4.0)
    blurred[blurred < 0.75] = 0.0
    return blurred.transpose(2, 0, 1)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
def test_blobs_equal_oe_per_image_construction(shape):
    mask = (torch.rand((12, *shape), generator=torch.Generator().manual_seed(3)) < 0.7).float()
    expected = np.stack([oe_blobs_of_one_image(image) for image in mask.numpy()])
    expected = torch.from_numpy(np.round(expected * 255)).to(torch.uint8)
    assert torch.equal(blobs_from(mask.clone()), expected)


def test_blobs_of_a_hand_made_mask():
    full, empty = torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    assert torch.all(blobs_from(full) == 255) and torch.all(blobs_from(empty) == 0)
    # One lit voxel among dark ones: its blurred value is the product of three 1-D kernel centres
    # 1 / sum_x exp(-x^2 / (2 * 1.5^2)) over |x| <= 6 (0.266 each), far below 0.75: all black.
    centre = 1 / sum(math.exp(-x * x / (2 * 1.5 ** 2)) for x in range(-6, 7))
    assert centre ** 3 < 0.75
    single = empty.clone()
    single[0, 1, 4, 4] = 1.0
    assert torch.all(blobs_from(single) == 0)
    # A dark voxel among lit ones blurs to 1 - centre^3 (0.981): 250 after rounding, the darkest
    # pixel; it stays bright, as does everything around it.
    hole = full.clone()
    hole[0, 1, 4, 4] = 0.0
    blobs = blobs_from(hole)
    assert blobs[0, 1, 4, 4] == round((1 - centre ** 3) * 255) == 250 == blobs.min()


def connected_regions(bright: np.ndarray) -> tuple[float, float]:
    """(mean number of 4-connected bright regions per image plane, mean region size in pixels)."""
    counts, sizes = [], []
    for plane in bright.reshape(-1, *bright.shape[-2:]):
        labels, count = ndimage.label(plane)
        counts.append(count)
        sizes.extend(np.bincount(labels.ravel())[1:])
    return float(np.mean(counts)), float(np.mean(sizes))


def test_blobs_are_few_large_bright_regions_on_black():
    blobs = synthetic_ood_images("blobs", 200, (3, 32, 32), seed=0).numpy()
    bright = blobs > 0
    # A pixel is black or a blurred value >= 0.75 (byte >= 191).
    assert blobs[bright].min() >= 191
    assert 0.1 < bright.mean() < 0.35
    regions, size = connected_regions(bright)
    # Independent pixels lit with the same probability form many small regions.
    rng = np.random.default_rng(0)
    noise_regions, noise_size = connected_regions(rng.random(bright.shape) < bright.mean())
    assert regions < noise_regions / 5 and size > 5 * noise_size
    assert size > 10  # pixels per region at seed 0: 16.7 (i.i.d. pixels: 1.7)


def test_blobs_mix_neighbouring_channels_as_oe_does():
    # OE blurs H x W x C as one volume: a channel's blobs depend on the other channels' mask, so
    # the three channels' bright regions overlap more than independent planes would.
    blobs = synthetic_ood_images("blobs", 200, (3, 32, 32), seed=0).numpy() > 0
    both = (blobs[:, 0] & blobs[:, 1]).mean()
    assert both > 1.5 * blobs[:, 0].mean() * blobs[:, 1].mean()


def test_an_unknown_set_is_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        synthetic_ood_images("salt", 4, (1, 8, 8), seed=0)
    message = str(error.value)
    assert "\n" not in message and "evaluation.ood='salt'" in message
    assert "gaussian, uniform, rademacher, blobs" in message


@pytest.mark.parametrize("count, shape", [(0, (1, 8, 8)), (4, (8, 8)), (4, (1, 0, 8))])
def test_an_empty_count_or_a_shape_other_than_c_h_w_is_refused(count, shape):
    with pytest.raises(ValueError, match="expected count >= 1 and an image shape"):
        synthetic_ood_images("gaussian", count, shape, seed=0)
