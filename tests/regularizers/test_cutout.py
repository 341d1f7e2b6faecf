"""Cutout: one size x size hole per image, centred uniformly over the image and clipped at the
border, half the image's side by default; every image its own hole; refusals; its effect on a
run."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, read_history, train_in_process
from regbench.config import ConfigError
from regbench.regularizers.cutout import (
    Cutout,
    CutoutConfig,
    hole_size,
    random_centres,
    squares_at,
)
from regbench.regularizers.random_erasing import ErasingFill, rectangle_masks


def holes(centres: list[tuple[int, int]], size: int, image: int = 32) -> torch.Tensor:
    rows, cols = (torch.tensor(values) for values in zip(*centres))
    return rectangle_masks(squares_at(rows, cols, size), image, image)


def test_hole_is_a_square_around_its_centre_clipped_at_the_border():
    masks = holes([(16, 16), (0, 0), (31, 20)], size=16)
    # By hand, rows and columns centre - 8 .. centre + 7 (as the authors' y - 8 .. y + 8 slice):
    # (16, 16): 8..23 x 8..23, the whole 16 x 16 = 256 px; (0, 0): 0..7 x 0..7 = 64 px;
    # (31, 20): rows 23..31 (9) x columns 12..27 (16) = 144 px.
    assert masks.sum(dim=(1, 2)).tolist() == [256, 64, 144]
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[23:32, 12:28] = True
    assert torch.equal(masks[2], expected)
    assert masks[0, 8:24, 8:24].all()


def test_odd_sizes_give_a_hole_of_that_size():
    assert holes([(10, 10)], size=7).sum().item() == 49


def test_centres_are_uniform_so_each_pixel_is_covered_as_computed_by_hand():
    torch.manual_seed(0)
    draws, size = 20000, 16
    rows, cols = random_centres(draws, 32, 32, torch.device("cpu"))
    coverage = rectangle_masks(squares_at(rows, cols, size), 32, 32).double().mean(dim=0)
    # Pixel i is in the hole when the centre row c has c - 8 <= i <= c + 7, i.e. c in
    # [i - 7, i + 8] within 0..31: 9 centres for i = 0, 16 for i = 16, 8 for i = 31.
    per_row = torch.tensor([min(i + 8, 31) - max(i - 7, 0) + 1 for i in range(32)]) / 32
    expected = per_row[:, None] * per_row[None, :]
    assert expected[0, 0].item() == pytest.approx(81 / 1024)
    assert torch.allclose(coverage, expected.double(), atol=0.012)


@pytest.mark.parametrize("side, expected", [(32, 16), (28, 14), (8, 4), (1, 1)])
def test_default_size_is_half_the_image_side(side, expected):
    assert hole_size(CutoutConfig(), side, side) == expected
    assert hole_size(CutoutConfig(size=8), side, side) == 8  # CIFAR-100's 8 px: set explicitly


def test_every_image_gets_its_own_hole():
    torch.manual_seed(0)
    images = torch.full((8, 3, 32, 32), 200, dtype=torch.uint8)
    erased, _ = Cutout(CutoutConfig(fill=ErasingFill.zero)).transform_batch(images, torch.zeros(8))
    masks = erased[:, 0] == 0
    assert all(mask.any() for mask in masks)
    assert len({tuple(mask.flatten().tolist()) for mask in masks}) > 1
    assert torch.equal(erased[:, 0], erased[:, 1])  # all channels of a pixel erased together


def test_hole_is_filled_with_the_batch_mean_by_default():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    erased, _ = Cutout(CutoutConfig()).transform_batch(images, torch.zeros(16))
    masks = (erased != images).any(dim=1)
    means = images.float().mean(dim=(0, 2, 3)).round()
    for channel in range(3):
        assert (erased[:, channel][masks].float() == means[channel]).all()


@pytest.mark.parametrize("size", ["0", "-4"])
def test_size_below_one_pixel_is_refused_in_one_line(size):
    cfg = compose_config(["regularizer=cutout", f"regularizer.cutout.size={size}"])
    refusal = rf"regularizer\.cutout\.size={size} is not allowed"
    with pytest.raises(ConfigError, match=refusal) as error:
        OmegaConf.to_object(cfg)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_cutout_makes_training_harder_on_digits(tmp_path):
    common = ["seed=0", "evaluation.calibrators=[]"]
    train_in_process(tmp_path / "none", ["regularizer=none", *common])
    cut = train_in_process(tmp_path / "cutout", ["regularizer=cutout", *common])
    # Same seed: a 4 x 4 hole in every 8 x 8 digit makes the batches harder to fit. Measured (seed
    # 0, 3 epochs): last epoch's training loss 0.117 without, 0.344 with; test accuracy 0.953 and
    # 0.931 (30 epochs, 3 seeds: 0.973 and 0.984).
    baseline_loss = read_history(tmp_path / "none")[-1]["train/loss"]
    assert read_history(tmp_path / "cutout")[-1]["train/loss"] > baseline_loss * 2
    assert cut["test/acc"] > 0.85
