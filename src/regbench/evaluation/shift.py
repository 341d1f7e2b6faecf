"""Corruption shift: the test images under the corruptions of Hendrycks & Dietterich (2019,
CIFAR-10-C) at severities 1-5, made on the images' device from whole uint8 batches [N, C, H, W]
(C = 1 gray or 3 RGB, any H and W from ``MIN_SIDE`` up), deterministic given a ``torch.Generator``.

The names are those of the CIFAR-10-C files (``gaussian_noise.npy``, ...) and the severity
parameters are the published ones (``SEVERITY_PARAMETERS``), chosen there for 32x32 images. What
changes with the image size, and why:

- Lengths in pixels (gaussian and defocus blur sigma and disk radius, motion blur radius and sigma)
  are multiplied by ``pixel_scale`` = max(1, shorter side / 32): linearly above 32 (x7 at 224, which
  gives gaussian sigma 2.8-7 against ImageNet-C's own 1-6), unchanged below. Shrunk for 8x8 digits
  they would be sigma 0.1-0.25 px, which rounds back to the same uint8 image (a blur that does
  nothing), and MNIST-C kept pixel-sized blurs at 28x28 (glass blur sigma 0.7, motion radius 10).
- What the published code states relative to the image stays relative: elastic_transform's
  parameters are fractions of IMSIZE (the shorter side here), pixelate keeps int(side * fraction)
  pixels per side, zoom_blur's factors are ratios, and fog's plasma map is the next power of two
  that covers the image (their 32 at 32x32, 256 cropped to 224 in ImageNet-C).
- Intensity parameters (noise, contrast, brightness, saturation, JPEG quality) do not depend on size
  (ImageNet-C chose stronger ones for 224x224; these stay CIFAR-10-C's at every size).

What the published parameters do, measured (tests/evaluation/test_shift.py): the mean change
|x' - x| grows with severity for every corruption but two. saturate desaturates at severities 1-2
(S x 0.3, x 0.1) and oversaturates at 3-5; elastic_transform's affine jitter shrinks (0.08 to 0.03
of the side) as its displacement grows, and its mean change does not grow (it falls on random
images). At 8x8, zoom_blur's severity 1 is the identity (a factor below 1.0625 leaves a side of 8
pixels 8) and pixelate keeps 7, 7, 6, 6, 5 pixels per side, so its severity 5 changes digits less
than its severity 3.

Differences from make_cifar_c.py, all deliberate: values are rounded to uint8 where their
``np.uint8`` truncates (which darkens every corrupted image by half a level on average); the random
draws differ from numpy's, so no image matches the released files bit for bit (the notes: nobody's
do; use ``evaluation.shift=published`` for those); on CUDA, JPEG is nvjpeg's, whose decoder may
differ from libjpeg's in the last bit.
Gray images are corrupted as one channel: brightness adds to the intensity (V of a gray pixel),
saturate needs colour and is refused (``standard_suite(1)`` leaves it out).

Not made here: glass_blur (its pixel swaps run one after another over the image, each reading the
result of the last), frost (needs the six frost photographs of the release), snow and spatter.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from regbench.config.errors import ConfigError, check

SEVERITIES = (1, 2, 3, 4, 5)
# The image side the published parameters were chosen for (CIFAR-10).
REFERENCE_SIDE = 32
# The smallest side accepted: digits' 8x8, the smallest regbench trains on and the tests cover
# (defocus_blur's reflect padding, 3 pixels below 32x32, must fit inside the image).
MIN_SIDE = 8

# Hendrycks & Dietterich 2019, make_cifar_c.py (hendrycks/robustness, ImageNet-C/create_c/, its only
# commit ca36008): the parameter of severities 1..5 of each corruption, for 32x32 images. In the
# script's order: its benchmark corruptions (12 of its 15), then its extras (3 of its 4).
SEVERITY_PARAMETERS: dict[str, tuple] = {
    # sigma of additive N(0, sigma^2) on [0, 1]
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    # photons c: x' = Poisson(x c) / c
    "shot_noise": (500, 250, 100, 75, 50),
    # share of values set to 0 or 1, half each (skimage random_noise 's&p', per value)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    # (disk radius, anti-aliasing sigma), pixels
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # ImageMagick MotionBlurImage (radius, sigma), pixels; angle U(-45, 45) degrees
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    # end of np.arange(1, end, 0.01), the zoom factors averaged with the image
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),
    # (strength, wibble decay of the plasma fractal)
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    # added to HSV value
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    # factor on each channel's deviation from its mean
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # (displacement alpha, its smoothing sigma, affine jitter), fractions of IMSIZE
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                          (0.1, 0.03, 0.03)),
    # share of each side kept by the BOX downsampling
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    # JPEG quality
    "jpeg_compression": (80, 65, 58, 50, 40),
    # sigma of multiplicative noise: x' = x + x N(0, sigma^2)
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    # sigma, pixels
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    # HSV saturation S' = S a + b: (a, b)
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}
CORRUPTIONS = tuple(SEVERITY_PARAMETERS)
# Corruptions that need colour.
RGB_ONLY = ("saturate",)

Corruption = Callable[[torch.Tensor, object, torch.Generator], torch.Tensor]


def check_corruption(name: str, severity: int) -> None:
    """Refuse an unknown corruption name or a severity outside 1-5, in one line."""
    check(name in SEVERITY_PARAMETERS, "corruption", name, f"one of {', '.join(CORRUPTIONS)}")
    check(isinstance(severity, numbers.Integral) and not isinstance(severity, bool)
          and severity in SEVERITIES, "severity", severity, "an integer from 1 to 5")


def standard_suite(channels: int) -> tuple[str, ...]:
    """Every corruption made here that applies to images of ``channels`` channels: all of them for
    RGB, all but saturate for gray (a gray pixel has no saturation to change)."""
    check(channels in (1, 3), "channels", channels, "1 (gray) or 3 (RGB)")
    return CORRUPTIONS if channels == 3 else tuple(n for n in CORRUPTIONS if n not in RGB_ONLY)


def corruption_generator(seed: int, name: str, severity: int,
                         device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one corrupted set of a run: seeded from the run's seed, the corruption's
    place in CORRUPTIONS and the severity, so that a set's images do not depend on which sets were
    made before it (nor on the order). Distinct for every (name, severity) of a seed >= 0."""
    check_corruption(name, severity)
    generator = torch.Generator(device=device)
    return generator.manual_seed(seed * 1000 + CORRUPTIONS.index(name) * 10 + severity)


def check_images(images: torch.Tensor, name: str) -> None:
    """Refuse a batch the corruptions cannot take, in one line."""
    shape = tuple(images.shape)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"corruption {name!r}: images of dtype {images.dtype} and shape {shape} "
                          f"are not allowed: uint8 [N, C, H, W] with C 1 (gray) or 3 (RGB)")
    if min(shape[2:]) < MIN_SIDE:
        raise ConfigError(f"corruption {name!r}: images of {shape[2]}x{shape[3]} pixels are not "
                          f"allowed: at least {MIN_SIDE}x{MIN_SIDE}")
    if name in RGB_ONLY and shape[1] != 3:
        raise ConfigError(f"corruption {name!r} is not allowed on gray images (1 channel): it "
                          f"changes colour saturation and needs RGB; standard_suite(1) leaves "
                          f"it out")


def corrupt(images: torch.Tensor, name: str, severity: int,
            generator: torch.Generator) -> torch.Tensor:
    """``images`` (uint8 [N, C, H, W]) under corruption ``name`` at ``severity`` (1-5): uint8, same
    shape and device. Random draws come from ``generator`` (on the images' device): the same
    generator state and batch give the same images."""
    check_corruption(name, severity)
    check_images(images, name)
    parameter = SEVERITY_PARAMETERS[name][severity - 1]
    corrupted = CORRUPTION_FUNCTIONS[name](images.float() / 255, parameter, generator)
    return to_uint8(corrupted)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8, clipped and rounded to the nearest level."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def pixel_scale(images: torch.Tensor) -> float:
    """The factor on the published lengths in pixels: see the module's docstring."""
    return max(1.0, min(images.shape[-2:]) / REFERENCE_SIDE)


def uniform(images: torch.Tensor, shape: tuple[int, ...], low: float, high: float,
            generator: torch.Generator) -> torch.Tensor:
    """U(low, high) draws of ``shape``, on the images' device and dtype."""
    draws = torch.rand(shape, generator=generator, device=images.device, dtype=images.dtype)
    return draws * (high - low) + low


# --- Noise ---------------------------------------------------------------------------------------

def gaussian_noise(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return images + sigma * noise


def shot_noise(images: torch.Tensor, photons: float, generator: torch.Generator) -> torch.Tensor:
    return torch.poisson(images * photons, generator=generator) / photons


def impulse_noise(images: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    flipped = uniform(images, images.shape, 0, 1, generator) < amount
    salt = uniform(images, images.shape, 0, 1, generator) < 0.5
    return torch.where(flipped, salt.to(images.dtype), images)


def speckle_noise(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return images + images * sigma * noise


# --- Blur ----------------------------------------------------------------------------------------

def pad_border(images: torch.Tensor, radius: int, dim: int, border: str) -> torch.Tensor:
    """``radius`` pixels added on both sides of ``dim``: 'nearest' repeats the edge pixel, 'reflect'
    mirrors about the outer border with the edge pixel doubled (d c b a | a b c d | d c b a, one
    reflection: radius <= size), as scipy.ndimage names them."""
    size = images.shape[dim]
    index = torch.arange(-radius, size + radius, device=images.device)
    if border == "nearest":
        index = index.clamp(0, size - 1)
    else:
        index = torch.where(index < 0, -index - 1, index)
        index = torch.where(index >= size, 2 * size - 1 - index, index)
    return images.index_select(dim, index)


def gaussian_filter(images: torch.Tensor, sigma: float, truncate: float,
                    border: str) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter over H and W (what scikit-image's gaussian calls): taps
    exp(-d^2 / 2 sigma^2), |d| <= int(truncate sigma + 0.5), normalized; ``border`` as in
    ``pad_border``. Separable, 2 (2r + 1) products a pixel where torchvision's gaussian_blur makes
    (2r + 1)^2 and pads only by reflection about the edge pixel: elastic_transform's field at
    224x224 has r = 134."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    taps = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    count, channels, height, width = images.shape
    planes = images.reshape(count * channels, 1, height, width)
    planes = F.conv2d(pad_border(planes, radius, -1, border), taps.view(1, 1, 1, -1))
    planes = F.conv2d(pad_border(planes, radius, -2, border), taps.view(1, 1, -1, 1))
    return planes.view(count, channels, height, width)


def gaussian_blur(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """scikit-image's gaussian defaults: truncate 4, the edge pixel repeated beyond the border."""
    return gaussian_filter(images, sigma * pixel_scale(images), truncate=4, border="nearest")


def disk_kernel(radius: float, alias_sigma: float, images: torch.Tensor) -> torch.Tensor:
    """make_cifar_c.py's ``disk``: the pixels within ``radius`` of the centre, normalized, then
    anti-aliased by a 3x3 Gaussian (5x5 above radius 8) of ``alias_sigma``. Built on a grid wide
    enough that the anti-aliasing never reads its border, then cut to the part it reached."""
    from torchvision.transforms.v2.functional import gaussian_blur as blur

    alias_size = 3 if radius <= 8 else 5
    reach = math.ceil(radius) + alias_size // 2
    grid = torch.arange(-reach - 1, reach + 2, device=images.device, dtype=images.dtype)
    disk = (grid[:, None] ** 2 + grid[None, :] ** 2 <= radius ** 2).to(images.dtype)
    kernel = blur((disk / disk.sum())[None], [alias_size, alias_size], [alias_sigma, alias_sigma])
    return kernel[0, 1:-1, 1:-1]


def filter_every_channel(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Every channel correlated with ``kernel`` (odd square), borders reflected about the edge
    pixel (OpenCV filter2D's default BORDER_REFLECT_101)."""
    count, channels, height, width = images.shape
    planes = F.pad(images.reshape(count * channels, 1, height, width), [kernel.shape[-1] // 2] * 4,
                   mode="reflect")
    return F.conv2d(planes, kernel[None, None]).view(count, channels, height, width)


def defocus_blur(images: torch.Tensor, disk: tuple[float, float],
                 generator: torch.Generator) -> torch.Tensor:
    radius, alias_sigma = (value * pixel_scale(images) for value in disk)
    return filter_every_channel(images, disk_kernel(radius, alias_sigma, images))


def motion_offsets(images: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """ImageMagick's MotionBlurImage taps: tap i reads the pixel i steps along the image's angle
    (U(-45, 45) degrees), rounded as ceil(v - 0.5). Returns [N, length, 2] (row, column) offsets."""
    angle = torch.deg2rad(uniform(images, (len(images), 1), -45, 45, generator))
    steps = torch.arange(length, device=images.device, dtype=images.dtype)
    rows = torch.ceil(steps * torch.sin(angle) - 0.5)
    columns = torch.ceil(steps * torch.cos(angle) - 0.5)
    return torch.stack([rows, columns], dim=-1).long()


def motion_blur(images: torch.Tensor, blur: tuple[float, float],
                generator: torch.Generator) -> torch.Tensor:
    """A one-sided Gaussian streak along a random angle per image: out(p) = sum_i k_i x(p + o_i),
    k_i = exp(-i^2 / 2 sigma^2) normalized over i < 2 ceil(radius) + 1 (ImageMagick's kernel width),
    edge pixels repeated beyond the border (its default virtual pixels)."""
    radius, sigma = (value * pixel_scale(images) for value in blur)
    length = 2 * math.ceil(radius) + 1
    steps = torch.arange(length, device=images.device, dtype=images.dtype)
    taps = torch.exp(-steps ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    offsets = motion_offsets(images, length, generator)
    count, channels, height, width = images.shape
    rows = torch.arange(height, device=images.device)[None, :, None]
    columns = torch.arange(width, device=images.device)[None, None, :]
    flat = images.flatten(2)
    blurred = torch.zeros_like(images)
    for tap in range(length):  # a loop over kernel taps, each one gather for the whole batch
        source_rows = (rows + offsets[:, tap, 0, None, None]).clamp(0, height - 1)
        source_columns = (columns + offsets[:, tap, 1, None, None]).clamp(0, width - 1)
        index = (source_rows * width + source_columns).flatten(1)
        shifted = flat.gather(2, index[:, None, :].expand(count, channels, -1))
        blurred += taps[tap] * shifted.view_as(images)
    return blurred


def zoom_factors(end: float) -> list[float]:
    """np.arange(1, end, 0.01) (torch.arange computes its length the same way): 7, 12, 16, 21 and
    26 factors, the last 1.06, 1.11, 1.15, 1.20, 1.25: float rounding keeps the end value in the
    first two."""
    return torch.arange(1, end, 0.01, dtype=torch.float64).tolist()


def clipped_zoom(images: torch.Tensor, factor: float) -> torch.Tensor:
    """make_cifar_c.py's ``clipped_zoom``: the centre 1/factor of the image, zoomed by ``factor``
    with scipy's order-1 ``zoom`` (output side round(side * factor), corners aligned), then
    (zoomed side - side) // 2 trimmed from the top and the left and the rest cut to size."""
    height, width = images.shape[-2:]
    crop_height, crop_width = math.ceil(height / factor), math.ceil(width / factor)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    crop = images[..., top:top + crop_height, left:left + crop_width]
    size = (round(crop_height * factor), round(crop_width * factor))
    zoomed = F.interpolate(crop, size=size, mode="bilinear", align_corners=True)
    trim_top, trim_left = (size[0] - height) // 2, (size[1] - width) // 2
    return zoomed[..., trim_top:trim_top + height, trim_left:trim_left + width]


def zoom_blur(images: torch.Tensor, end: float, generator: torch.Generator) -> torch.Tensor:
    factors = zoom_factors(end)
    total = images.clone()
    for factor in factors:  # a loop over zoom factors, each one interpolation of the whole batch
        total += clipped_zoom(images, factor)
    return total / (len(factors) + 1)


# --- Weather and digital -------------------------------------------------------------------------

def contrast(images: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    means = images.mean(dim=(-2, -1), keepdim=True)
    return (images - means) * factor + means


def brightness(images: torch.Tensor, shift: float, generator: torch.Generator) -> torch.Tensor:
    if images.shape[1] == 1:  # a gray pixel's HSV value is its intensity
        return (images + shift).clamp(0, 1)
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

    hue, saturation, value = _rgb_to_hsv(images).unbind(dim=1)
    return _hsv_to_rgb(torch.stack([hue, saturation, (value + shift).clamp(0, 1)], dim=1))


def saturate(images: torch.Tensor, affine: tuple[float, float],
             generator: torch.Generator) -> torch.Tensor:
    """S' = clip(S a + b): with b > 0 a gray pixel (S = 0, hue 0 by scikit-image's and torchvision's
    convention) turns reddish, as in the published files."""
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

    scale, offset = affine
    hue, saturation, value = _rgb_to_hsv(images).unbind(dim=1)
    return _hsv_to_rgb(torch.stack([hue, (saturation * scale + offset).clamp(0, 1), value], dim=1))


def plasma_fractal(images: torch.Tensor, size: int, decay: float,
                   generator: torch.Generator) -> torch.Tensor:
    """make_cifar_c.py's diamond-square height map, one per image: [N, size, size] in [0, 1].
    ``size`` is a power of two; each level adds wibble * U(-wibble, wibble) (sic: wibble squared),
    wibble starting at 100 and divided by ``decay`` per level."""
    maps = torch.zeros(len(images), size, size, device=images.device, dtype=images.dtype)
    step, wibble = size, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        return total / 4 + wibble * uniform(images, total.shape, -wibble, wibble, generator)

    while step >= 2:  # a loop over the log2(size) levels, each for the whole batch
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, dims=1)
        maps[:, half::step, half::step] = wibbled_mean(squares + squares.roll(-1, dims=2))
        centres, corners = maps[:, half::step, half::step], maps[:, 0::step, 0::step]
        across = centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        down = centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        maps[:, 0::step, half::step] = wibbled_mean(across)
        maps[:, half::step, 0::step] = wibbled_mean(down)
        step, wibble = half, wibble / decay
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    return maps / maps.amax(dim=(1, 2), keepdim=True)


def fog(images: torch.Tensor, haze: tuple[float, float],
        generator: torch.Generator) -> torch.Tensor:
    """x + a * plasma, rescaled by max / (max + a) with the image's max over all channels."""
    strength, decay = haze
    height, width = images.shape[-2:]
    size = 1 << (max(height, width) - 1).bit_length()
    plasma = plasma_fractal(images, size, decay, generator)[:, None, :height, :width]
    peak = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images + strength * plasma) * peak / (peak + strength)


def box_resampling(size_in: int, size_out: int, images: torch.Tensor) -> torch.Tensor:
    """[size_out, size_in] matrix of PIL's BOX resize along one axis (Pillow's precompute_coeffs):
    output pixel i averages the input pixels whose centres j + 0.5 lie in (c - s, c + s], with
    c = (i + 0.5) * size_in / size_out and s = max(size_in / size_out, 1) / 2. Enlarging, that
    is the input pixel under the output pixel's centre."""
    scale = size_in / size_out
    support = max(scale, 1.0) / 2
    centres = (torch.arange(size_out, dtype=torch.float64) + 0.5)[:, None] * scale
    pixel_centres = torch.arange(size_in, dtype=torch.float64)[None, :] + 0.5
    inside = (pixel_centres > centres - support) & (pixel_centres <= centres + support)
    weights = inside.double() / inside.sum(dim=1, keepdim=True)
    return weights.to(device=images.device, dtype=images.dtype)


def pixelate(images: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """PIL BOX down to int(side * fraction) pixels per side, then BOX back up, as one matrix per
    axis: rows (up @ down) @ image @ columns (up @ down)^T."""
    height, width = images.shape[-2:]
    small_height, small_width = int(height * fraction), int(width * fraction)
    rows = (box_resampling(small_height, height, images)
            @ box_resampling(height, small_height, images))
    columns = (box_resampling(small_width, width, images)
               @ box_resampling(width, small_width, images))
    return rows @ images @ columns.T


def jpeg_compression(images: torch.Tensor, quality: int,
                     generator: torch.Generator) -> torch.Tensor:
    """A real JPEG encode and decode at ``quality`` through torchvision's list API: libjpeg with its
    4:2:0 defaults, as PIL's (torchvision calls it image by image); nvjpeg, batched, for RGB on
    CUDA (its gray support is not relied on)."""
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    pixels = to_uint8(images)
    if pixels.device.type != "cuda" or pixels.shape[1] != 3:
        pixels = pixels.cpu()
    encoded = encode_jpeg(list(pixels.unbind(0)), quality=quality)
    if encoded[0].device.type != "cpu":  # decode_jpeg reads host memory: one copy for the batch
        encoded = list(torch.cat(encoded).cpu().split([len(data) for data in encoded]))
    decoded = decode_jpeg(encoded, mode=ImageReadMode.UNCHANGED, device=pixels.device)
    return torch.stack(decoded).to(images.device, images.dtype) / 255


def warp(images: torch.Tensor, source: torch.Tensor, mirror_about_centres: bool) -> torch.Tensor:
    """Each output pixel read bilinearly at ``source`` ([N, H, W, 2] pixel coordinates (x, y)),
    reflected beyond the image: about the edge pixels' centres (OpenCV's BORDER_REFLECT_101,
    scipy's 'mirror') or about the image's outer border, the edge pixel doubled (scipy's
    'reflect')."""
    height, width = images.shape[-2:]
    size = torch.tensor([width, height], device=images.device, dtype=source.dtype)
    # grid_sample's -1 and 1 are the edge pixels' centres with align_corners=True, the outer
    # borders without: its reflection mirrors about them.
    grid = source / (size - 1) * 2 - 1 if mirror_about_centres else (2 * source + 1) / size - 1
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="reflection",
                         align_corners=mirror_about_centres)


def pixel_coordinates(images: torch.Tensor) -> torch.Tensor:
    """[H, W, 2] float64 (x, y) of every pixel."""
    height, width = images.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height, device=images.device, dtype=torch.float64),
                            torch.arange(width, device=images.device, dtype=torch.float64),
                            indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def random_affine(images: torch.Tensor, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """elastic_transform's first step: three points around the centre (a third of the shorter side
    out) each moved by U(-jitter, jitter) pixels per coordinate; the image warped by the affine map
    that moves them so (OpenCV warpAffine: bilinear, BORDER_REFLECT_101)."""
    count, _, height, width = images.shape
    centre_x, centre_y, reach = width // 2, height // 2, min(height, width) // 3
    points = torch.tensor([[centre_x + reach, centre_y + reach],
                           [centre_x + reach, centre_y - reach],
                           [centre_x - reach, centre_y - reach]], device=images.device,
                          dtype=torch.float64)
    moved = points + uniform(images, (count, 3, 2), -jitter, jitter, generator).double()
    # An output pixel reads the source where the inverse map (moved -> points) sends it.
    ones = torch.ones(count, 3, 1, device=images.device, dtype=torch.float64)
    inverse = torch.linalg.solve(torch.cat([moved, ones], dim=2), points.expand(count, 3, 2))
    pixels = pixel_coordinates(images)
    source = pixels @ inverse[:, None, :2] + inverse[:, None, None, 2]  # [N, H, W, 2]
    return warp(images, source, mirror_about_centres=True)


def elastic_transform(images: torch.Tensor, fractions: tuple[float, float, float],
                      generator: torch.Generator) -> torch.Tensor:
    """Random affine, then every pixel read from (x + dx, y + dy), dx and dy alpha times a U(-1, 1)
    field smoothed by a Gaussian of sigma (their skimage gaussian, truncate 3, mode 'reflect');
    bilinear, map_coordinates' 'reflect' beyond the border. Severity 1 has alpha = 0: the affine
    step only."""
    alpha, sigma, jitter = (fraction * min(images.shape[-2:]) for fraction in fractions)
    images = random_affine(images, jitter, generator)
    if alpha == 0:
        return images
    displacement = elastic_displacement(images, alpha, sigma, generator)
    return warp(images, pixel_coordinates(images) + displacement, mirror_about_centres=False)


def elastic_displacement(images: torch.Tensor, alpha: float, sigma: float,
                         generator: torch.Generator) -> torch.Tensor:
    """[N, H, W, 2] (dx, dy): alpha times U(-1, 1) fields smoothed as their skimage gaussian(field,
    sigma, mode='reflect', truncate=3)."""
    count, _, height, width = images.shape
    field = uniform(images, (count, 2, height, width), -1, 1, generator)
    smooth = gaussian_filter(field, sigma, truncate=3, border="reflect")
    return (smooth * alpha).permute(0, 2, 3, 1)


CORRUPTION_FUNCTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "saturate": saturate,
}
