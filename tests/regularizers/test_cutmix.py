"""CutMix: torchvision's CutMix pastes one box of the rolled batch into every image, and the targets
weigh the partner by the box's area; it trains on digits."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, train_end_to_end, train_in_process
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS, RunContext
from regbench.regularizers.cutmix import CutMixConfig
from regbench.regularizers.mixup import MixupConfig

CONTEXT = RunContext(dataset="digits", model="mlp", num_classes=10, epochs=1, optimizer="sgd")


def build(name: str, cfg):
    regularizer = REGULARIZERS.get(name)(cfg)
    regularizer.setup(CONTEXT)
    return regularizer


def test_box_comes_from_the_partner_and_targets_weigh_its_area():
    torch.manual_seed(3)
    # Image i is filled with the value i + 1, so each pixel tells where it came from.
    images = (torch.arange(1, 7, dtype=torch.uint8).view(6, 1, 1, 1) * torch.ones(1, 1, 16, 16,
                                                                               dtype=torch.uint8))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    cutmix = build("cutmix", CutMixConfig())
    for _ in range(20):  # several boxes; at least one non-empty is checked below
        mixed, targets = cutmix.transform_batch(images, labels)
        assert mixed.dtype == torch.uint8
        for i in range(6):
            own = (mixed[i] == images[i]).float().mean().item()
            partner = (mixed[i] == images[i - 1]).float().mean().item()
            assert own + partner == 1  # every pixel is its own or the partner's
            # By hand: target lam = 1 - box area / image area = the fraction of own pixels.
            assert targets[i, labels[i]].item() == pytest.approx(own, abs=1e-6)
            assert targets[i, labels[i - 1]].item() == pytest.approx(partner, abs=1e-6)
    assert 0 < targets[0, 0].item() <= 1


def test_mixup_after_cutmix_mixes_the_soft_targets_again():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    cut_images, cut = build("cutmix", CutMixConfig()).transform_batch(images, torch.arange(4))
    torch.manual_seed(1)
    mixed_images, targets = build("mixup", MixupConfig()).transform_batch(cut_images, cut)
    # MixUp's own draw, repeated with the same seed: lam ~ Beta(1, 1).
    torch.manual_seed(1)
    lam = torch.distributions.Beta(torch.tensor([1.0]), torch.tensor([1.0])).sample(()).item()
    # By hand: the CutMix targets (not their dominant classes) mixed with the rolled batch's.
    assert torch.allclose(targets, lam * cut + (1 - lam) * cut.roll(1, 0), atol=1e-6)
    assert mixed_images.is_floating_point()


def test_alpha_must_be_positive():
    cfg = compose_config(["regularizer=cutmix", "regularizer.cutmix.alpha=0"])
    with pytest.raises(ConfigError, match=r"regularizer\.cutmix\.alpha"):
        OmegaConf.to_object(cfg)


@pytest.mark.slow
def test_cutmix_trains_on_digits_and_differs_from_none(tmp_path):
    common = ["trainer.epochs=5", "seed=0"]
    baseline = train_in_process(tmp_path / "none", ["regularizer=none", *common])
    cut = train_in_process(tmp_path / "cutmix", ["regularizer=cutmix", *common])
    # Mixed targets pull the confidence well away from none's (0.967 at seed 0, 5 epochs).
    assert cut["test/acc"] > 0.8
    assert abs(cut["test/mean_confidence"] - baseline["test/mean_confidence"]) > 0.05


@pytest.mark.slow
def test_a_run_with_the_preset_completes_and_logs_the_cross_entropy(tmp_path):
    metrics, history = train_end_to_end(tmp_path, ["regularizer=cutmix"])
    assert metrics["regularizer"] == ["cutmix"] and "train/loss_ce" in history[-1]
