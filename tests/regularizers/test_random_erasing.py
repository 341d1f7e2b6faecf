"""Random Erasing: torchvision's rectangle sampling (area and aspect bounds, log-uniform aspect,
first of 10 draws that fits) per image of a batch, erased with probability p; the default fill
normalizes to about 0 as the sources' erasing; float images too; refusals; the effect on a run."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats

from conftest import compose_config, read_history, train_end_to_end, train_in_process
from regbench.config import ConfigError
from regbench.regularizers.random_erasing import (
    ErasingFill,
    RandomErasing,
    RandomErasingConfig,
    erasing_rectangles,
    rectangle_masks,
)

CPU = torch.device("cpu")


def rectangles(count: int, size: int = 224, **settings):
    torch.manual_seed(0)
    rects = erasing_rectangles(count, size, size, RandomErasingConfig(**settings), CPU)
    return rects, (rects.height * rects.width).double() / size**2, rects.height / rects.width


def test_rectangles_stay_within_the_area_and_aspect_bounds_over_many_draws():
    rects, area, ratio = rectangles(20000, p=1.0)
    assert rects.erase.all()
    # Bounds up to the rounding of h and w to whole pixels (< 4 % at 224 px).
    assert area.min() >= 0.02 * 0.96 and area.max() <= 0.33 * 1.04
    assert ratio.min() >= 0.3 * 0.96 and ratio.max() <= 3.3 * 1.04
    assert area.min() < 0.021 and area.max() > 0.32  # the whole range is drawn
    assert ratio.min() < 0.31 and ratio.max() > 3.1
    # Inside the image: 0 <= top and top + h <= H.
    assert (rects.top >= 0).all() and (rects.top + rects.height <= 224).all()
    assert (rects.left >= 0).all() and (rects.left + rects.width <= 224).all()


def test_area_is_uniform_and_aspect_log_uniform():
    # Where no draw is rejected (h < H and w < W always), the kept draw is the first one, so the
    # area fraction is U(0.02, 0.33) given a moderate aspect, and log(h/w) is U(log 0.3, log 3.3)
    # given a small area (checked with Kolmogorov-Smirnov against scipy's distributions).
    _, area, ratio = rectangles(20000, p=1.0)
    moderate = (ratio > 0.5) & (ratio < 2.0)
    assert stats.kstest(area[moderate].numpy(), stats.uniform(0.02, 0.31).cdf).pvalue > 1e-3
    small = area < 0.1
    log_ratio = torch.log(ratio[small]).numpy()
    uniform = stats.uniform(math.log(0.3), math.log(3.3) - math.log(0.3))
    assert stats.kstest(log_ratio, uniform.cdf).pvalue > 1e-3


def test_a_fixed_area_and_aspect_give_the_hand_computed_square():
    # area 1/4 of 32 x 32 = 256 px at aspect 1: h = w = round(sqrt(256)) = 16, placed at 0..16.
    rects, area, _ = rectangles(2000, size=32, p=1.0, scale=[0.25, 0.25], ratio=[1.0, 1.0])
    assert (rects.height == 16).all() and (rects.width == 16).all()
    assert set(rects.top.tolist()) == set(range(17)) and set(rects.left.tolist()) == set(range(17))
    masks = rectangle_masks(rects, 32, 32)
    assert (masks.sum(dim=(1, 2)) == 256).all()


def test_each_image_is_erased_with_probability_p_within_binomial_bounds():
    rects, _, _ = rectangles(4000, size=32, p=0.3)
    erased = int(rects.erase.sum())
    assert stats.binomtest(erased, 4000, 0.3).pvalue > 1e-3
    assert not rectangles(100, size=32, p=0.0)[0].erase.any()


def test_no_rectangle_when_none_of_the_ten_draws_fits():
    # An area of the whole image never fits (h < H and w < W fails): the image stays as it is.
    rects, _, _ = rectangles(50, size=8, p=1.0, scale=[1.0, 1.0], ratio=[1.0, 1.0])
    assert not rects.erase.any()


def test_two_images_of_a_batch_get_different_rectangles():
    torch.manual_seed(0)
    images = torch.full((8, 3, 32, 32), 200, dtype=torch.uint8)
    erasing = RandomErasing(RandomErasingConfig(p=1.0, fill=ErasingFill.zero))
    erased, labels = erasing.transform_batch(images, torch.arange(8))
    masks = erased[:, 0] == 0
    assert labels.tolist() == list(range(8))
    assert all(masks[i].any() for i in range(8))
    assert len({tuple(mask.flatten().tolist()) for mask in masks}) == 8
    assert torch.equal(erased[:, 0], erased[:, 2])  # all channels of a pixel erased together


def test_erased_pixels_normalize_to_about_zero_in_a_real_run():
    # The sources erase after normalization, to 0 = the mean colour; regbench normalizes after
    # transform_batch (Run.prepare), so the default fill is the batch's mean, which the run's
    # normalization (digits: dataset.mean 0.305, std 0.376) maps to about 0; fill=zero is black,
    # -mean/std after normalization.
    from regbench.cli.compose import compose_settings
    from regbench.run.engine import Run

    run = Run.build(compose_settings(["regularizer=random_erasing", "trainer.num_threads=1",
                                      "regularizer.random_erasing.p=1"]))
    images, labels = next(iter(run.data.train))
    erasing = run.regularizers[0]
    torch.manual_seed(0)
    erased, _ = erasing.transform_batch(images, labels)
    masks = (erased != images)[:, 0]
    assert masks.any(dim=(1, 2)).float().mean() > 0.5
    assert run.prepare(erased)[:, 0][masks].abs().max() < 0.1
    torch.manual_seed(0)
    erasing.cfg.fill = ErasingFill.zero
    black = run.prepare(erasing.transform_batch(images, labels)[0])[:, 0][masks]
    assert black.max().item() == pytest.approx(-0.305 / 0.376, abs=1e-4)


def rectangle_masks_of(erased: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Where any channel changed: the erased pixels (less the few equal to the fill by chance)."""
    return (erased != images).any(dim=1)


def test_random_fill_has_the_batch_channel_statistics():
    torch.manual_seed(0)
    # Channels of other means and spreads, far from 0 and 255 (the noise is clipped there).
    centre = torch.tensor([100.0, 60.0, 150.0]).view(1, 3, 1, 1)
    spread = torch.tensor([20.0, 10.0, 30.0]).view(1, 3, 1, 1)
    images = (centre + spread * torch.randn(64, 3, 32, 32)).round().to(torch.uint8)
    erasing = RandomErasing(RandomErasingConfig(p=1.0, scale=[0.3, 0.33],
                                                fill=ErasingFill.random))
    erased, _ = erasing.transform_batch(images, torch.zeros(64))
    masks = rectangle_masks_of(erased, images)
    for channel in range(3):
        pixels = images[:, channel].float()
        filled = erased[:, channel][masks].float()
        assert filled.mean().item() == pytest.approx(pixels.mean().item(), abs=2)
        assert filled.std().item() == pytest.approx(pixels.std().item(), rel=0.05)


def test_float_images_in_zero_one_are_filled_with_their_mean():
    torch.manual_seed(0)
    images = torch.rand(16, 1, 16, 16)  # what mixup or CutMix hand on
    erased, _ = RandomErasing(RandomErasingConfig(p=1.0)).transform_batch(images, torch.zeros(16))
    assert erased.dtype == torch.float32
    changed = rectangle_masks_of(erased, images)
    assert changed.any()
    assert torch.allclose(erased[:, 0][changed], images.mean().expand(int(changed.sum())))


@pytest.mark.parametrize("key, value", [
    ("p", "-0.1"), ("p", "1.5"),
    ("scale", "[0.33,0.02]"), ("scale", "[0,0.3]"), ("scale", "[0.1,1.5]"), ("scale", "[0.1]"),
    ("ratio", "[0,3.3]"), ("ratio", "[3.3,0.3]"), ("ratio", "[-1,2]"),
])
def test_bad_values_are_refused_in_one_line(key, value):
    cfg = compose_config(["regularizer=random_erasing",
                          f"regularizer.random_erasing.{key}={value}"])
    with pytest.raises(ConfigError, match=rf"regularizer\.random_erasing\.{key}=") as error:
        OmegaConf.to_object(cfg)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_random_erasing_makes_training_harder_on_digits(tmp_path):
    common = ["seed=0", "evaluation.calibrators=[]"]
    train_in_process(tmp_path / "none", ["regularizer=none", *common])
    erased = train_in_process(tmp_path / "erasing", ["regularizer=random_erasing", *common])
    # Same seed: the erased batches are harder to fit. Measured (seed 0, 3 epochs): last epoch's
    # training loss 0.117 without, 0.239 with; test accuracy 0.953 and 0.939 (30 epochs, 3 seeds:
    # 0.973 and 0.980).
    baseline_loss = read_history(tmp_path / "none")[-1]["train/loss"]
    assert read_history(tmp_path / "erasing")[-1]["train/loss"] > baseline_loss * 1.5
    assert erased["test/acc"] > 0.85


@pytest.mark.slow
def test_a_run_with_crops_mixup_and_random_erasing_completes(tmp_path):
    # After mixup the batch is float in [0, 1] with soft targets: erasing takes it as it is.
    metrics, history = train_end_to_end(tmp_path, ["regularizer=[augmentation,mixup,random_erasing]"])
    assert sorted(metrics["regularizer"]) == ["augmentation", "mixup", "random_erasing"]
    assert 0 <= history[-1]["train/acc"] <= 1
