"""Logit normalization: cross-entropy of f / (tau ||f||) by hand, invariant to the logits' scale;
it replaces the cross-entropy and changes the test confidence on digits."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, read_history, train_in_process
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS, StepOutput
from regbench.regularizers.logit_norm import LogitNormConfig


def loss(logits: torch.Tensor, labels: torch.Tensor, tau: float = 0.04) -> torch.Tensor:
    regularizer = REGULARIZERS.get("logit_norm")(LogitNormConfig(tau=tau))
    step = StepOutput(torch.zeros(len(labels), 1), labels, logits, torch.zeros(len(labels), 1),
                      torch.nn.Identity(), 0, 0.0)
    assert regularizer.owns_base_loss and regularizer.loss_terms(step) == {}
    return regularizer.base_loss(step)


def test_hand_computed_example():
    # f = (3, 4): ||f|| = 5, f / (0.04 * 5) = (15, 20). Label 0: -15 + log(e^15 + e^20) = log(1 + e^5).
    logits = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    assert loss(logits, torch.tensor([0])).item() == pytest.approx(math.log(1 + math.e ** 5), rel=1e-6)
    assert loss(logits, torch.tensor([1])).item() == pytest.approx(math.log(1 + math.e ** -5), rel=1e-6)


def test_loss_ignores_the_logits_scale():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (8,), generator=generator)
    assert loss(10 * logits, labels).item() == pytest.approx(loss(logits, labels).item(), rel=1e-6)


def test_tau_must_be_positive():
    cfg = compose_config(["regularizer=logit_norm", "regularizer.logit_norm.tau=0"])
    with pytest.raises(ConfigError, match=r"regularizer\.logit_norm\.tau=0"):
        OmegaConf.to_object(cfg)


@pytest.mark.slow
def test_logit_norm_changes_test_confidence_on_digits(tmp_path):
    common = ["trainer.epochs=5", "seed=0"]
    baseline = train_in_process(tmp_path / "none", ["regularizer=none", *common])
    normed = train_in_process(tmp_path / "ln", ["regularizer=logit_norm", *common])
    # With the default SGD lr 0.05 nothing bounds the raw logits' norm, which grows to near-certain
    # predictions (30 epochs, 5 seeds: 0.994 against none's 0.985, README's calibration_losses).
    assert abs(normed["test/mean_confidence"] - baseline["test/mean_confidence"]) > 0.02
    for record in read_history(tmp_path / "ln"):
        assert "train/loss_ce" not in record
        assert record["train/loss"] == pytest.approx(record["train/loss_logit_norm"], abs=1e-6)
