"""Label smoothing: the term turns plain cross-entropy into torch's smoothed cross-entropy, and
training with it makes the network less confident on real data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import (
    compose_config,
    read_history,
    train_end_to_end,
    train_in_process,
    train_with_cli,
)
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS, StepOutput
from regbench.regularizers.label_smoothing import LabelSmoothingConfig


def step_output(logits: torch.Tensor, labels: torch.Tensor) -> StepOutput:
    return StepOutput(inputs=torch.zeros(len(labels), 1), labels=labels, logits=logits,
                      features=torch.zeros(len(labels), 1), model=torch.nn.Identity(), epoch=0,
                      progress=0.0)


def term(epsilon: float, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    regularizer = REGULARIZERS.get("label_smoothing")(LabelSmoothingConfig(epsilon=epsilon))
    terms = regularizer.loss_terms(step_output(logits, labels))
    assert list(terms) == ["label_smoothing"]
    return terms["label_smoothing"]


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3, 0.9])
def test_cross_entropy_plus_term_is_torch_smoothed_cross_entropy(epsilon):
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(16, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (16,), generator=generator)
    ce = F.cross_entropy(logits, labels)
    value = term(epsilon, logits, labels)
    expected = F.cross_entropy(logits, labels, label_smoothing=epsilon)
    assert abs((ce + value).item() - expected.item()) < 1e-6
    # The decomposition the module's comment states: eps * (cross-entropy against the uniform
    # distribution - CE), with the uniform cross-entropy mean_k -log p_k.
    uniform_ce = -F.log_softmax(logits, dim=1).mean(dim=1).mean()
    assert abs(value.item() - epsilon * (uniform_ce - ce).item()) < 1e-6


def test_hand_computed_example():
    # K = 3, logits (2, 0, 0), Z = e^2 + 2, eps = 0.3 -> targets 0.8 / 0.1 / 0.1 on the true class /
    # the others. Label 0: smoothed = -0.8 (2 - log Z) + 0.2 log Z = log Z - 1.6, CE = log Z - 2,
    # term 0.4. Label 1: smoothed = -0.1 (2 - log Z) + 0.9 log Z = log Z - 0.2, CE = log Z,
    # term -0.2. The batch mean: term 0.1, smoothed loss log Z - 0.9.
    logits = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    log_z = math.log(math.e ** 2 + 2)
    value = term(0.3, logits, labels)
    assert abs(value.item() - 0.1) < 1e-6
    assert abs((F.cross_entropy(logits, labels) + value).item() - (log_z - 0.9)) < 1e-6


def test_config_composes_with_default_and_override():
    settings = OmegaConf.to_object(compose_config(["regularizer=label_smoothing"]))
    assert settings.regularizer["label_smoothing"].epsilon == 0.1
    settings = OmegaConf.to_object(compose_config(["regularizer=label_smoothing",
                                                   "regularizer.label_smoothing.epsilon=0.2"]))
    assert settings.regularizer["label_smoothing"].epsilon == 0.2


@pytest.mark.parametrize("epsilon", ["1.0", "-0.1"])
def test_epsilon_outside_zero_one_is_refused(epsilon):
    cfg = compose_config(["regularizer=label_smoothing",
                          f"regularizer.label_smoothing.epsilon={epsilon}"])
    with pytest.raises(ConfigError, match=r"regularizer\.label_smoothing\.epsilon"):
        OmegaConf.to_object(cfg)


@pytest.mark.slow
def test_label_smoothing_lowers_test_confidence_on_digits(tmp_path):
    common = ["trainer.epochs=5", "trainer.num_threads=1", "seed=0"]
    baseline = train_in_process(tmp_path / "none", ["regularizer=none", *common])
    smoothed = train_in_process(tmp_path / "ls", ["regularizer=label_smoothing", *common])
    # Measured (seeds 0-3): about 0.96 without, 0.82 with eps = 0.1; the smoothed target's own
    # maximum is 0.91, so a fitted network cannot sit near 1.
    assert smoothed["test/mean_confidence"] < baseline["test/mean_confidence"] - 0.08
    assert smoothed["test/acc"] > 0.9  # still learns the task
    # The logged terms add up to the logged total.
    for record in read_history(tmp_path / "ls"):
        assert record["train/loss_ce"] + record["train/loss_label_smoothing"] == pytest.approx(
            record["train/loss"], abs=1e-5)


@pytest.mark.slow
def test_a_run_with_the_preset_logs_its_term_every_epoch(tmp_path):
    _, history = train_end_to_end(tmp_path, ["regularizer=label_smoothing"])
    assert all("train/loss_label_smoothing" in record for record in history)


@pytest.mark.slow
def test_cli_run_combines_with_dropout(tmp_path):
    metrics, history = train_with_cli(tmp_path, ["regularizer=[dropout,label_smoothing]"])
    assert metrics["regularizer"] == ["dropout", "label_smoothing"]
    assert "train/loss_label_smoothing" in history[-1]
