"""Augmentation: every image of a batch gets its own zero-padded random crop (checked against all
possible windows, cut out by hand) and its own flip where flips are configured; dtype and shape are
kept; only training batches are transformed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchvision.transforms import v2

from conftest import compose_config, train_end_to_end, train_in_process
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS, RunContext
from regbench.regularizers.augmentation import Augmentation, AugmentationConfig, AugmentationMode


def augmentation(dataset: str = "digits", **config) -> Augmentation:
    regularizer = REGULARIZERS.get("augmentation")(AugmentationConfig(**config))
    regularizer.setup(RunContext(dataset=dataset, model="mlp", num_classes=10, epochs=1,
                                 optimizer="sgd", val_size=0))
    return regularizer


def distinct_image(channels: int = 2, size: int = 8) -> torch.Tensor:
    """An image of distinct nonzero pixels, so every crop and flip of it is recognizable."""
    assert channels * size * size < 256
    return torch.arange(1, channels * size * size + 1, dtype=torch.uint8).view(channels, size, size)


def windows(image: torch.Tensor, padding: int, flips: bool) -> list[torch.Tensor]:
    """Every crop of the zero-padded image (and of its mirror image, with flips), by slicing."""
    _, height, width = image.shape
    candidates = [image, image.flip(-1)] if flips else [image]
    result = []
    for candidate in candidates:
        padded = F.pad(candidate, (padding,) * 4)
        for top in range(2 * padding + 1):
            for left in range(2 * padding + 1):
                result.append(padded[:, top:top + height, left:left + width])
    return result


def window_index(output: torch.Tensor, candidates: list[torch.Tensor]) -> int:
    matches = [i for i, candidate in enumerate(candidates) if torch.equal(output, candidate)]
    assert len(matches) == 1, "not a zero-padded crop of the input"
    return matches[0]


def test_torchvision_v2_draws_one_crop_and_one_flip_for_a_whole_batch():
    """Why augmentation.py draws its own per-image offsets: if this ever fails, torchvision does
    per-sample parameters itself and could be used directly."""
    torch.manual_seed(0)
    batch = distinct_image().expand(64, -1, -1, -1).clone()
    crops = v2.RandomCrop(8, padding=2)(batch)
    flips = v2.RandomHorizontalFlip()(batch)
    assert all(torch.equal(crops[0], crop) for crop in crops)
    assert all(torch.equal(flips[0], flip) for flip in flips)


@pytest.mark.parametrize("mode,padding,flips", [("crop_flip", 2, True), ("shift", 1, False)])
def test_each_image_gets_its_own_zero_padded_crop_and_flip(mode, padding, flips):
    torch.manual_seed(0)
    image = distinct_image()
    batch = image.expand(256, -1, -1, -1).clone()
    labels = torch.arange(256)
    regularizer = augmentation(mode=AugmentationMode(mode), crop_padding=padding)
    out, out_labels = regularizer.transform_batch(batch, labels)
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    assert torch.equal(out_labels, labels)
    candidates = windows(image, padding, flips)
    used = {window_index(output, candidates) for output in out}
    # 256 images spread over all 25 (or 9) windows: offsets are drawn per image.
    assert used == set(range(len(candidates)))
    assert torch.equal(batch, image.expand(256, -1, -1, -1))  # the input is left untouched


def test_padding_is_zero():
    torch.manual_seed(0)
    white = torch.full((64, 1, 8, 8), 255, dtype=torch.uint8)
    out, _ = augmentation(crop_padding=3).transform_batch(white, torch.zeros(64))
    assert set(out.unique().tolist()) == {0, 255}
    # Each image is a white rectangle on black: zero rows/columns only at the borders.
    for image in out[:, 0]:
        rows = (image == 255).any(dim=1).nonzero().flatten()
        cols = (image == 255).any(dim=0).nonzero().flatten()
        assert torch.equal(image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] == 255,
                           torch.ones(len(rows), len(cols), dtype=torch.bool))
        assert len(rows) >= 5 and len(cols) >= 5  # shifted by at most 3 px


def test_flips_only_mirror_without_padding():
    torch.manual_seed(0)
    image = distinct_image()
    out, _ = augmentation(mode=AugmentationMode.crop_flip, crop_padding=0).transform_batch(
        image.expand(100, -1, -1, -1).clone(), torch.zeros(100))
    flipped = torch.tensor([torch.equal(o, image.flip(-1)) for o in out])
    assert all(flipped[i] or torch.equal(out[i], image) for i in range(100))
    assert 30 < flipped.sum().item() < 70


@pytest.mark.parametrize("dataset,size,padding,flips", [
    ("digits", 8, 1, False), ("mnist", 28, 2, False), ("fashion_mnist", 28, 4, True),
    ("cifar10", 32, 4, True), ("cifar100", 32, 4, True), ("pets", 128, 16, True),
])
def test_auto_mode_follows_the_dataset(dataset, size, padding, flips):
    regularizer = augmentation(dataset)
    assert regularizer.padding(size) == padding and regularizer.flips() == flips


def test_explicit_options_override_the_mode():
    regularizer = augmentation("cifar10", crop_padding=1, hflip=False)
    assert regularizer.padding(32) == 1 and regularizer.flips() is False
    assert augmentation("digits", hflip=True).flips() is True


def test_unknown_dataset_and_no_op_settings_are_refused():
    with pytest.raises(ConfigError, match=r"mode=auto .* 'svhn'; set mode"):
        augmentation("svhn")
    augmentation("svhn", mode=AugmentationMode.shift)
    with pytest.raises(ConfigError, match=r"regularizer\.augmentation\.crop_padding=0"):
        augmentation("digits", crop_padding=0)


def test_config_composes_and_bad_values_are_refused():
    cfg = compose_config(["regularizer=augmentation", "regularizer.augmentation.mode=shift",
                          "regularizer.augmentation.crop_padding=3"])
    assert OmegaConf.to_object(cfg).regularizer["augmentation"] == AugmentationConfig(
        mode=AugmentationMode.shift, crop_padding=3)
    with pytest.raises(ConfigError, match=r"regularizer\.augmentation\.crop_padding=-1"):
        OmegaConf.to_object(compose_config(["regularizer=augmentation",
                                            "regularizer.augmentation.crop_padding=-1"]))


@pytest.mark.slow
def test_only_training_batches_are_augmented(tmp_path, monkeypatch):
    seen: list[int] = []
    original = Augmentation.transform_batch

    def spy(self, images, labels):
        seen.append(len(labels))
        return original(self, images, labels)

    monkeypatch.setattr(Augmentation, "transform_batch", spy)
    metrics = train_in_process(tmp_path / "run", ["regularizer=augmentation", "trainer.epochs=2"])
    assert metrics["status"] == "completed"
    # digits: 1437 - 180 validation = 1257 training images, 19 full batches of 64 per epoch (the
    # last partial batch is dropped); validation, test and train-eval batches never pass through.
    assert seen == [64] * 19 * 2


@pytest.mark.slow
def test_a_run_with_the_augmentation_preset_completes(tmp_path):
    train_end_to_end(tmp_path, ["regularizer=augmentation"])
