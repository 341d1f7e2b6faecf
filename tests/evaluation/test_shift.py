"""evaluation/shift.py: each corruption against a hand calculation or the library the published code
used (scipy, PIL, matplotlib's HSV), severities against the distortion they add, and what the
corruptions keep (dtype, shape, device, determinism, gray and RGB of any size)."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch

from regbench.config.errors import ConfigError
from regbench.evaluation import shift
from regbench.evaluation.shift import (
    CORRUPTIONS,
    SEVERITIES,
    SEVERITY_PARAMETERS,
    corrupt,
)

# torchvision 0.29 deprecates torchvision.io's JPEG codec in favour of TorchCodec; it still works.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (channels, height, width): digits, MNIST, CIFAR, and an odd size of neither.
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 37, 45)]
# The corruptions that draw random numbers.
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur", "fog",
          "elastic_transform")


def generator(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def constant(value: int, channels: int = 1, height: int = 32, width: int = 32,
             count: int = 1) -> torch.Tensor:
    return torch.full((count, channels, height, width), value, dtype=torch.uint8)


def smooth_rgb(count: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    """Random images with structure at several scales (bilinear upsampling of coarse noise), so
    that blurs and pixelation have something to remove, unlike i.i.d. noise."""
    torch.manual_seed(seed)
    coarse = torch.rand(count, 3, height // 4, width // 4)
    images = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    images = 0.7 * images + 0.3 * torch.rand(count, 3, height, width)
    return images.mul(255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """360 real digits, scaled to uint8 as datasets/digits.py does."""
    from sklearn.datasets import load_digits
    images = torch.from_numpy(load_digits().images[:360] * (255.0 / 16.0))
    return images.round().to(torch.uint8).unsqueeze(1)


def mean_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return (after.float() - before.float()).abs().mean().item()


# --- What every corruption keeps -----------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_corruption_keeps_dtype_shape_and_device_for_gray_and_rgb_of_any_size(shape, device):
    images = smooth_rgb(3, *shape[1:])[:, :shape[0]].contiguous().to(device)
    for name in shift.standard_suite(shape[0]):
        for severity in SEVERITIES:
            out = corrupt(images, name, severity, generator(device=device))
            assert (out.dtype, out.shape, out.device) == (torch.uint8, images.shape, images.device)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_the_same_generator_seed_gives_the_same_images_and_another_seed_other_ones(name):
    images = smooth_rgb(4)
    first = corrupt(images, name, 3, generator(1))
    assert torch.equal(first, corrupt(images, name, 3, generator(1)))
    assert torch.equal(first, corrupt(images, name, 3, generator(2))) == (name not in RANDOM)


def test_each_corrupted_set_of_a_run_has_its_own_generator_whatever_was_made_before():
    images = smooth_rgb(4)

    def gaussian_noise_s3(seed: int) -> torch.Tensor:
        own = shift.corruption_generator(seed, "gaussian_noise", 3)
        return corrupt(images, "gaussian_noise", 3, own)
    first = gaussian_noise_s3(0)
    corrupt(images, "fog", 5, shift.corruption_generator(0, "fog", 5))
    assert torch.equal(gaussian_noise_s3(0), first)
    assert not torch.equal(gaussian_noise_s3(1), first)
    seeds = {shift.corruption_generator(0, name, severity).initial_seed()
             for name in CORRUPTIONS for severity in SEVERITIES}
    assert len(seeds) == len(CORRUPTIONS) * len(SEVERITIES)


def test_the_published_lengths_in_pixels_are_kept_below_32_and_scaled_above():
    for (height, width), scale in [((8, 8), 1.0), ((28, 28), 1.0), ((32, 32), 1.0),
                                   ((37, 45), 37 / 32), ((224, 224), 7.0)]:
        assert shift.pixel_scale(torch.zeros(1, 1, height, width)) == scale


def test_shrunk_to_8x8_the_published_gaussian_blur_would_change_no_digit(digits):
    """Why lengths are not shrunk below 32 (module docstring): sigma = 1 px at 32x32 would be
    0.25 px at 8x8, a kernel whose neighbours weigh exp(-8) = 3e-4, below half a gray level."""
    from torchvision.transforms.v2.functional import gaussian_blur
    shrunk = gaussian_blur(digits.float(), [3, 3], [0.25, 0.25]).round().to(torch.uint8)
    assert torch.equal(shrunk, digits)
    assert mean_change(digits, corrupt(digits, "gaussian_blur", 5, generator())) > 10


# --- Noise: statistics at a fixed seed -----------------------------------------------------------

def noise_of(name: str, severity: int, value: int = 128) -> torch.Tensor:
    """(x' - x) / 255 on a 256x256 RGB image of ``value`` (196,608 values)."""
    images = constant(value, 3, 256, 256)
    return (corrupt(images, name, severity, generator()).double() - value) / 255


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_has_mean_zero_and_the_published_sigma(severity):
    sigma = SEVERITY_PARAMETERS["gaussian_noise"][severity - 1]
    noise = noise_of("gaussian_noise", severity)
    # Rounding to uint8 adds a uniform error of variance (1/255)^2 / 12; no value reaches 0 or 1.
    expected = math.sqrt(sigma ** 2 + 1 / (12 * 255 ** 2))
    assert noise.std().item() == pytest.approx(expected, rel=0.01)
    assert abs(noise.mean().item()) < 3 * expected / math.sqrt(noise.numel())


@pytest.mark.parametrize("severity", SEVERITIES)
def test_shot_noise_has_the_variance_of_poisson_counts_x_c_over_c(severity):
    """Before rounding to uint8, whose error is not uniform on a grid of step 1/c this fine."""
    photons = SEVERITY_PARAMETERS["shot_noise"][severity - 1]
    intensity = 0.5
    images = torch.full((1, 3, 256, 256), intensity, dtype=torch.float64)
    counts = shift.shot_noise(images, photons, generator())
    assert counts.mean().item() == pytest.approx(intensity, abs=3 * math.sqrt(intensity / photons
                                                                              / images.numel()))
    assert counts.var().item() == pytest.approx(intensity / photons, rel=0.02)
    photon_counts = counts * photons
    assert (photon_counts - photon_counts.round()).abs().max() < 1e-9  # whole photon counts


@pytest.mark.parametrize("severity", SEVERITIES)
def test_impulse_noise_sets_the_published_share_of_values_to_black_or_white_half_each(severity):
    amount = SEVERITY_PARAMETERS["impulse_noise"][severity - 1]
    out = corrupt(constant(128, 3, 256, 256), "impulse_noise", severity, generator())
    count = out.numel()
    black, white = (out == 0).sum().item(), (out == 255).sum().item()
    assert black + white + (out == 128).sum().item() == count
    tolerance = 4 * math.sqrt(count * amount * (1 - amount))  # 4 binomial standard deviations
    assert abs(black + white - count * amount) < tolerance
    assert abs(white - black) < 4 * math.sqrt(count * amount)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_speckle_noise_std_is_sigma_times_the_intensity(severity):
    sigma = SEVERITY_PARAMETERS["speckle_noise"][severity - 1]
    for value in (64, 128):  # 128 (1 + 5 x 0.2) just reaches 255: no clipping to speak of
        noise = noise_of("speckle_noise", severity, value)
        expected = math.sqrt((value / 255 * sigma) ** 2 + 1 / (12 * 255 ** 2))
        assert noise.std().item() == pytest.approx(expected, rel=0.01)


# --- Blur: kernels against hand values and scipy -------------------------------------------------

def impulse(side: int = 32) -> torch.Tensor:
    """A float image of zeros with a 1 at the centre."""
    image = torch.zeros(1, 1, side, side)
    image[0, 0, side // 2, side // 2] = 1
    return image


@pytest.mark.parametrize("shape", [(8, 8), (37, 45), (64, 64)])
def test_gaussian_blur_is_scikit_images_gaussian_that_is_scipys_gaussian_filter(shape):
    """scikit-image's gaussian(sigma) is scipy's gaussian_filter with truncate 4 and mode
    'nearest', borders included; sigma is scaled above 32 pixels."""
    from scipy.ndimage import gaussian_filter
    images = smooth_rgb(2, *shape).float() / 255
    for sigma in SEVERITY_PARAMETERS["gaussian_blur"]:
        out = shift.gaussian_blur(images, sigma, generator()).double().numpy()
        scaled = sigma * shift.pixel_scale(images)
        reference = gaussian_filter(images.double().numpy(), (0, 0, scaled, scaled), truncate=4,
                                    mode="nearest")
        np.testing.assert_allclose(out, reference, atol=1e-6)


@pytest.mark.parametrize("severity", [2, 3, 4, 5])
def test_the_elastic_displacement_is_alpha_times_scipys_gaussian_filter_of_uniform_noise(severity):
    """Their skimage gaussian(U(-1, 1) field, sigma, mode='reflect', truncate=3) * alpha, borders
    included, at 8x8 too, where severity 2's kernel (radius int(0.6 side + 0.5)) nearly spans it."""
    from scipy.ndimage import gaussian_filter
    alpha, sigma, _ = SEVERITY_PARAMETERS["elastic_transform"][severity - 1]
    for side in (8, 32):
        images = torch.zeros(3, 1, side, side, dtype=torch.float64)
        displacement = shift.elastic_displacement(images, alpha * side, sigma * side, generator(5))
        field = torch.rand(3, 2, side, side, generator=generator(5), dtype=torch.float64) * 2 - 1
        reference = gaussian_filter(field.numpy(), (0, 0, sigma * side, sigma * side), truncate=3,
                                    mode="reflect") * alpha * side
        np.testing.assert_allclose(displacement.permute(0, 3, 1, 2).numpy(), reference, atol=1e-12)


def test_defocus_blur_of_an_impulse_is_the_published_disk():
    def kernel(severity: int) -> torch.Tensor:
        out = shift.defocus_blur(impulse(), SEVERITY_PARAMETERS["defocus_blur"][severity - 1],
                                 generator())
        return out[0, 0, 13:20, 13:20]
    # Severity 5: radius 1.5 holds the 3x3 square (1 + 1 <= 2.25); its anti-aliasing sigma 0.1
    # gives the neighbours exp(-50): a box of 1/9.
    box = torch.zeros(7, 7)
    box[2:5, 2:5] = 1 / 9
    torch.testing.assert_close(kernel(5), box, atol=1e-6, rtol=0)
    # Severity 4: radius 1 holds the centre and its four neighbours, sigma 0.2: a plus of 1/5.
    plus = torch.zeros(7, 7)
    plus[3, 2:5] = plus[2:5, 3] = 1 / 5
    torch.testing.assert_close(kernel(4), plus, atol=1e-5, rtol=0)
    # Severity 1: radius 0.3 holds the centre only; the 3x3 Gaussian of sigma 0.4 weighs it
    # (1 / (1 + 2 exp(-1 / 0.32)))^2 = 0.8449.
    assert kernel(1)[3, 3].item() == pytest.approx(0.8449, abs=1e-4)
    assert kernel(1).sum().item() == pytest.approx(1, abs=1e-6)


def test_defocus_blur_correlates_every_channel_with_the_disk_mirrored_at_the_border():
    """OpenCV filter2D's default border, BORDER_REFLECT_101, is scipy's 'mirror'."""
    from scipy.ndimage import correlate
    images = smooth_rgb(2, 37, 45).float() / 255
    for radius, alias_sigma in SEVERITY_PARAMETERS["defocus_blur"]:
        scaled = shift.pixel_scale(images)
        kernel = shift.disk_kernel(radius * scaled, alias_sigma * scaled, images).double().numpy()
        out = shift.defocus_blur(images, (radius, alias_sigma), generator()).double().numpy()
        reference = correlate(images.double().numpy(), kernel[None, None], mode="mirror")
        np.testing.assert_allclose(out, reference, atol=1e-6)


def test_motion_blur_streaks_an_impulse_to_one_side_with_imagemagicks_kernel():
    """Severity 1 at 32x32: radius 6, sigma 1, so 13 taps exp(-i^2 / 2) normalized; the centre
    keeps tap 0 alone (every other tap moves at least one column), 1 / 1.7533 = 0.5703."""
    images = impulse().expand(16, 1, 32, 32).contiguous()
    out = shift.motion_blur(images, SEVERITY_PARAMETERS["motion_blur"][0], generator())
    assert out[:, 0, 16, 16] == pytest.approx(torch.full((16,), 0.5703), abs=1e-4)
    assert out.sum(dim=(1, 2, 3)) == pytest.approx(torch.ones(16), abs=1e-5)
    rows, columns = torch.nonzero(out[:, 0] > 1e-9, as_tuple=True)[1:]
    # The streak lies on one side, within 45 degrees of the row, at most 12 pixels long.
    assert (columns <= 16).all() and ((rows - 16).abs() <= 16 - columns).all()
    assert (16 - columns).max() <= 12
    streaks = {tuple((image[0] > 1e-9).flatten().tolist()) for image in out}
    assert len(streaks) > 8  # an angle per image


def their_clipped_zoom(image: np.ndarray, factor: float) -> np.ndarray:
    """make_cifar_c.py's clipped_zoom, with scipy, on an HWC array."""
    from scipy.ndimage import zoom
    side = image.shape[0]
    crop = int(np.ceil(side / factor))
    top = (side - crop) // 2
    zoomed = zoom(image[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - side) // 2
    return zoomed[trim:trim + side, trim:trim + side]


def test_clipped_zoom_equals_the_published_one_with_scipys_zoom():
    images = smooth_rgb(2).float() / 255
    for end in SEVERITY_PARAMETERS["zoom_blur"]:
        for factor in shift.zoom_factors(end):
            ours = shift.clipped_zoom(images, factor)[1].permute(1, 2, 0).numpy()
            np.testing.assert_allclose(ours, their_clipped_zoom(images[1].permute(1, 2, 0).numpy(),
                                                                factor), atol=1e-5)


def test_zoom_blur_averages_numpys_arange_of_factors_and_keeps_a_constant_image():
    ends = SEVERITY_PARAMETERS["zoom_blur"]
    assert [len(shift.zoom_factors(end)) for end in ends] == [
        len(np.arange(1, end, 0.01)) for end in ends] == [7, 12, 16, 21, 26]
    for severity in SEVERITIES:
        for shape in SHAPES:
            images = constant(91, *shape)
            assert torch.equal(corrupt(images, "zoom_blur", severity, generator()), images)


def test_zoom_blur_at_severity_1_leaves_8x8_digits_unchanged(digits):
    """Its factors 1.00-1.06 crop ceil(8 / z) = 8 pixels and zoom them to round(8 z) = 8."""
    assert torch.equal(corrupt(digits, "zoom_blur", 1, generator()), digits)
    assert not torch.equal(corrupt(digits, "zoom_blur", 2, generator()), digits)


# --- Colour and contrast -------------------------------------------------------------------------

@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_keeps_a_constant_image_and_scales_a_two_level_difference_by_its_factor(severity):
    factor = SEVERITY_PARAMETERS["contrast"][severity - 1]
    assert torch.equal(corrupt(constant(77, 3), "contrast", severity, generator()), constant(77, 3))
    two_level = constant(90, 1, 8, 8)
    two_level[..., 4:] = 210  # mean 150, each level 60 away (60 x factor is a whole number)
    out = corrupt(two_level, "contrast", severity, generator())
    assert out[..., :4].unique().tolist() == [150 - 60 * factor]
    assert out[..., 4:].unique().tolist() == [150 + 60 * factor]
    # Each channel around its own mean: a flat channel stays flat next to a two-level one.
    rgb = torch.cat([two_level, constant(30, 1, 8, 8), constant(240, 1, 8, 8)], dim=1)
    out = corrupt(rgb, "contrast", severity, generator())
    assert torch.equal(out[:, 0], corrupt(two_level, "contrast", severity, generator())[:, 0])
    assert out[:, 1].unique().tolist() == [30] and out[:, 2].unique().tolist() == [240]


def hsv_reference(images: torch.Tensor, change) -> torch.Tensor:
    """matplotlib's rgb_to_hsv and hsv_to_rgb (the model scikit-image implements), ``change``
    applied to the [N, H, W, 3] HSV array in place; uint8 NCHW out."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
    hsv = rgb_to_hsv(images.permute(0, 2, 3, 1).double().numpy() / 255)
    change(hsv)
    rgb = torch.from_numpy(hsv_to_rgb(hsv)).permute(0, 3, 1, 2)
    return rgb.clamp(0, 1).mul(255).round().to(torch.uint8)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_adds_to_the_hsv_value_of_rgb_and_to_the_intensity_of_gray(severity):
    shift_ = SEVERITY_PARAMETERS["brightness"][severity - 1]
    rgb = smooth_rgb(4)
    out = corrupt(rgb, "brightness", severity, generator())

    def brighten(hsv):
        hsv[..., 2] = np.clip(hsv[..., 2] + shift_, 0, 1)
    assert (out.int() - hsv_reference(rgb, brighten).int()).abs().max() <= 1
    value = rgb.amax(dim=1).float() / 255  # V = max(R, G, B)
    assert (out.amax(dim=1).float() - (value + shift_).clamp(max=1) * 255).abs().max() <= 0.5
    gray = torch.arange(0, 256, 4, dtype=torch.uint8).view(1, 1, 8, 8)
    exact = (gray.float() + shift_ * 255).clamp(max=255)  # may end in .5: either neighbour
    assert (corrupt(gray, "brightness", severity, generator()) - exact).abs().max() <= 0.501


@pytest.mark.parametrize("severity", SEVERITIES)
def test_saturate_scales_and_shifts_the_hsv_saturation(severity):
    scale, offset = SEVERITY_PARAMETERS["saturate"][severity - 1]
    rgb = smooth_rgb(4)

    def saturate(hsv):
        hsv[..., 1] = np.clip(hsv[..., 1] * scale + offset, 0, 1)
    out = corrupt(rgb, "saturate", severity, generator())
    assert (out.int() - hsv_reference(rgb, saturate).int()).abs().max() <= 1


def test_saturate_turns_a_gray_pixel_reddish_where_it_adds_saturation():
    """A gray pixel has S = 0 and hue 0 (red) by convention; severity 4 sets S = 0.1:
    (128, 128, 128) -> (128, 128 * 0.9, 128 * 0.9) = (128, 115, 115). Severities 1-3 add none."""
    gray = constant(128, 3, 8, 8)
    assert corrupt(gray, "saturate", 4, generator())[0, :, 0, 0].tolist() == [128, 115, 115]
    assert torch.equal(corrupt(gray, "saturate", 3, generator()), gray)


def test_saturate_desaturates_at_severities_1_and_2_and_oversaturates_at_3_to_5():
    """Not monotone in the change it makes, by the published parameters: S x 0.3, x 0.1, then
    x 1.5, x 2 + 0.1, x 2.5 + 0.2."""
    from torchvision.transforms.v2.functional._color import _rgb_to_hsv
    rgb = smooth_rgb(8)

    def mean_saturation(images):
        return _rgb_to_hsv(images.float() / 255)[:, 1].mean().item()
    saturation = [mean_saturation(corrupt(rgb, "saturate", s, generator())) for s in SEVERITIES]
    clean = mean_saturation(rgb)
    assert saturation[1] < saturation[0] < clean < saturation[2] < saturation[3] < saturation[4]


# --- Fog, pixelate, JPEG, elastic ----------------------------------------------------------------

@pytest.mark.parametrize("severity", SEVERITIES)
def test_fog_of_a_constant_image_spans_v_squared_over_v_plus_a_to_v(severity):
    """x' = (v + a p) v / (v + a), p the plasma map, which spans [0, 1] on a 32x32 image (its map
    is 32x32 whole): max v where p = 1, min v^2 / (v + a) where p = 0."""
    strength = SEVERITY_PARAMETERS["fog"][severity - 1][0]
    out = corrupt(constant(128, 3), "fog", severity, generator())
    value = 128 / 255
    assert out.max().item() == 128
    assert out.min().item() == round(255 * value ** 2 / (value + strength))
    assert torch.equal(out[:, 0], out[:, 2])  # one map for every channel


def test_plasma_maps_span_zero_to_one_and_are_rougher_with_a_smaller_decay():
    images = torch.zeros(64, 1, 32, 32)

    def roughness(decay: float) -> float:
        maps = shift.plasma_fractal(images, 32, decay, generator())
        assert (maps.amin(dim=(1, 2)) == 0).all() and (maps.amax(dim=(1, 2)) == 1).all()
        return (maps[:, 1:] - maps[:, :-1]).abs().mean().item()
    assert roughness(1.75) > roughness(3) > roughness(10)


def test_pixelate_averages_the_pixels_pil_box_groups_on_a_checkerboard():
    """8 -> 6 -> 8 pixels per side (severities 3 and 4 at 8x8: int(8 * 0.85) = int(8 * 0.75) = 6).
    PIL's BOX downsampling averages the pixels whose centres fall in ((i) 8/6, (i + 1) 8/6]:
    {0}, {1, 2}, {3}, {4}, {5, 6}, {7}; upsampling copies them back. A pixel of a checkerboard
    stays 0 or 255 where its row and column are alone in their groups, else becomes 127.5 -> 128."""
    rows, columns = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    board = ((rows + columns) % 2 * 255).to(torch.uint8).view(1, 1, 8, 8)
    alone = torch.tensor([1, 0, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    expected = torch.where(alone[:, None] & alone[None, :], board[0, 0], 128)
    for severity in (3, 4):
        assert torch.equal(corrupt(board, "pixelate", severity, generator())[0, 0], expected)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_pixelate_equals_pils_box_resizes_within_one_level(severity):
    """PIL rounds its downsampled image to uint8 before enlarging it, hence one level."""
    from PIL import Image
    fraction = SEVERITY_PARAMETERS["pixelate"][severity - 1]
    images = smooth_rgb(3, 37, 45)
    out = corrupt(images, "pixelate", severity, generator())
    for image, ours in zip(images, out):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        pil = pil.resize((int(45 * fraction), int(37 * fraction)), Image.BOX)
        pil = pil.resize((45, 37), Image.BOX)
        reference = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        assert (ours.int() - reference.int()).abs().max() <= 1
    assert [int(32 * f) for f in SEVERITY_PARAMETERS["pixelate"]] == [30, 28, 27, 24, 20]


@pytest.mark.parametrize("severity", SEVERITIES)
def test_jpeg_round_trip_keeps_a_flat_image_flat(severity):
    """A flat 8x8 block has only a DC coefficient, 8 (v - 128); quantized by at most 20 (the
    luminance DC 16 x 1.25 at quality 40), the value moves by at most 10 / 8 = 1.25 levels, and
    each colour difference channel by 21 / 16 in Cb, Cr (times 1.772 at most in RGB)."""
    for value, channels, bound in [(77, 1, 2), (128, 3, 2), ((200, 60, 30), 3, 4)]:
        images = constant(0, channels)
        images[0] = torch.tensor(value, dtype=torch.uint8).view(-1, 1, 1)
        out = corrupt(images, "jpeg_compression", severity, generator())
        assert (out.amax(dim=(2, 3)) == out.amin(dim=(2, 3))).all()
        assert (out.int() - images.int()).abs().max() <= bound


@pytest.mark.parametrize("severity", SEVERITIES)
def test_jpeg_compression_equals_pils_encode_and_decode_at_the_published_quality(severity):
    from PIL import Image
    quality = SEVERITY_PARAMETERS["jpeg_compression"][severity - 1]
    images = smooth_rgb(3)
    out = corrupt(images, "jpeg_compression", severity, generator())
    assert mean_change(images, out) > 1  # a real compression, not a copy
    for image, ours in zip(images, out):
        encoded = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(encoded, "JPEG", quality=quality)
        reference = torch.from_numpy(np.array(Image.open(encoded))).permute(2, 0, 1)
        # Both are libjpeg with its standard tables and 4:2:0; builds may differ in the last bit.
        assert (ours.int() - reference.int()).abs().float().mean() < 0.5


@pytest.mark.parametrize("mirror, mode", [(True, "mirror"), (False, "reflect")])
def test_warp_reads_like_scipys_map_coordinates_inside_and_beyond_the_border(mirror, mode):
    from scipy.ndimage import map_coordinates
    torch.manual_seed(0)
    image = torch.rand(1, 1, 9, 13)
    # Source points up to 3 pixels beyond every border.
    source = torch.rand(1, 9, 13, 2, dtype=torch.float64) * torch.tensor([18.0, 14.0]) - 3
    ours = shift.warp(image, source, mirror)[0, 0].double().numpy()
    reference = map_coordinates(image[0, 0].double().numpy(), [source[0, ..., 1].numpy(),
                                source[0, ..., 0].numpy()], order=1, mode=mode)
    np.testing.assert_allclose(ours, reference, atol=1e-5)  # grid_sample works in float32


def test_elastic_transform_without_jitter_or_displacement_is_the_identity():
    images = smooth_rgb(2, 37, 45).float() / 255
    torch.testing.assert_close(shift.elastic_transform(images, (0, 0, 0), generator()), images)


def test_elastic_transform_at_severity_1_is_affine():
    """Severity 1 has alpha = 0: an affine warp of a linear ramp is a linear ramp (away from the
    border, which it mirrors); the fitted plane leaves no residual."""
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramp = (0.2 + 0.01 * xs + 0.015 * ys).expand(4, 1, 32, 32)
    out = shift.elastic_transform(ramp, SEVERITY_PARAMETERS["elastic_transform"][0], generator())
    inside = (slice(10, -10), slice(10, -10))
    design = torch.stack([xs[inside].flatten(), ys[inside].flatten(), torch.ones(144)], dim=1)
    for image in out[:, 0]:
        values = image[inside].flatten().double()[:, None]
        plane = torch.linalg.lstsq(design.double(), values).solution
        residual = design.double() @ plane - values
        assert residual.abs().max() < 1e-5
        assert not torch.allclose(image, ramp[0, 0], atol=1e-3)  # it moved


# --- Severity against the distortion it adds -----------------------------------------------------

# saturate: desaturates, then saturates (test above). elastic_transform: the published affine
# jitter falls (2.56 -> 0.96 px at 32x32) as the displacement grows, and the mean change with it.
MONOTONE = tuple(name for name in CORRUPTIONS if name not in ("saturate", "elastic_transform"))


def changes_by_severity(images: torch.Tensor, name: str) -> list[float]:
    """Mean |x' - x| per severity, each from the same generator seed (common random numbers)."""
    return [mean_change(images, corrupt(images, name, s, generator(3))) for s in SEVERITIES]


@pytest.mark.parametrize("name", MONOTONE)
def test_the_change_a_corruption_makes_grows_with_severity_on_rgb_images(name):
    for images in (smooth_rgb(64), smooth_rgb(16, 37, 45)):
        changes = changes_by_severity(images, name)
        assert all(a <= b for a, b in itertools.pairwise(changes)), changes
        assert changes[0] < changes[-1]


@pytest.mark.parametrize("name", [n for n in MONOTONE if n != "pixelate"])
def test_the_change_a_corruption_makes_grows_with_severity_on_real_digits(name, digits):
    """pixelate is left out at 8x8: int(8 c) keeps 7, 7, 6, 6, 5 pixels, and the 5 of severity 5
    pair the border columns (mostly blank in digits) where the 6 pair the strokes."""
    changes = changes_by_severity(digits, name)
    assert all(a <= b for a, b in itertools.pairwise(changes)), changes
    assert changes[0] < changes[-1]


# --- Bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, severity, words", [
    ("glass_blur", 1, "corruption='glass_blur' is not allowed: one of gaussian_noise,"),
    ("gaussian_noise", 0, "severity=0 is not allowed: an integer from 1 to 5"),
    ("gaussian_noise", 6, "severity=6 is not allowed"),
    ("gaussian_noise", 2.0, "severity=2.0 is not allowed"),
    ("gaussian_noise", True, "severity=True is not allowed"),
])
def test_an_unknown_corruption_or_a_severity_outside_1_to_5_is_refused_in_one_line(name, severity,
                                                                                  words):
    with pytest.raises(ConfigError) as error:
        shift.check_corruption(name, severity)
    assert words in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError):
        corrupt(constant(1), name, severity, generator())
    shift.check_corruption("gaussian_noise", np.int64(3))  # numpy integers are integers


@pytest.mark.parametrize("images, words", [
    (torch.zeros(2, 3, 32, 32), "dtype torch.float32"),
    (constant(0)[0], "shape (1, 32, 32)"),
    (constant(0, 2), "C 1 (gray) or 3 (RGB)"),
    (constant(0, 1, 7, 32), "images of 7x32 pixels are not allowed: at least 8x8"),
])
def test_a_batch_the_corruptions_cannot_take_is_refused_in_one_line(images, words):
    with pytest.raises(ConfigError) as error:
        corrupt(images, "contrast", 1, generator())
    assert words in str(error.value) and "\n" not in str(error.value)


def test_saturate_on_gray_images_is_refused_and_left_out_of_the_gray_suite():
    with pytest.raises(ConfigError, match="'saturate' is not allowed on gray images"):
        corrupt(constant(0), "saturate", 1, generator())
    assert shift.standard_suite(3) == CORRUPTIONS and len(CORRUPTIONS) == 15
    assert shift.standard_suite(1) == tuple(n for n in CORRUPTIONS if n != "saturate")
    with pytest.raises(ConfigError, match="channels=2 is not allowed: 1 \\(gray\\) or 3 \\(RGB\\)"):
        shift.standard_suite(2)
