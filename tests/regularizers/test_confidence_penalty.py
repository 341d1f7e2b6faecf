"""Confidence penalty: the entropy term and its gradient match hand calculations, annealing and the
hinge do what they say, and training with it makes the network less confident on real data."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, train_end_to_end, train_in_process
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS, RunContext, StepOutput
from regbench.regularizers.confidence_penalty import ConfidencePenaltyConfig

# Two examples, K = 3: uniform logits (H = log 3) and logits (log 2, 0, 0), p = (1/2, 1/4, 1/4),
# H = 1/2 log 2 + 2 * 1/4 log 4 = 1.5 log 2.
LOGITS = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0]], dtype=torch.float64)
ENTROPIES = [math.log(3), 1.5 * math.log(2)]
# The entropy is computed in float32 (regbench.evaluation.metrics.predictive_entropy), as in training.
VALUE_TOLERANCE = 1e-6
GRADIENT_TOLERANCE = dict(rtol=1e-5, atol=1e-7)


def context(epochs: int = 10, num_classes: int = 3) -> RunContext:
    return RunContext(dataset="digits", model="mlp", num_classes=num_classes, epochs=epochs,
                      optimizer="sgd")


def penalty(epochs: int = 10, num_classes: int = 3, **options):
    regularizer = REGULARIZERS.get("confidence_penalty")(ConfidencePenaltyConfig(**options))
    regularizer.setup(context(epochs, num_classes))
    return regularizer


def term(regularizer, logits: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    batch = len(logits)
    step = StepOutput(inputs=torch.zeros(batch, 1), labels=torch.zeros(batch, dtype=torch.long),
                      logits=logits, features=torch.zeros(batch, 1), model=torch.nn.Identity(),
                      epoch=0, progress=progress)
    terms = regularizer.loss_terms(step)
    assert list(terms) == ["confidence_penalty"]
    return terms["confidence_penalty"]


def test_term_is_minus_beta_times_mean_entropy():
    value = term(penalty(beta=0.5), LOGITS)
    assert value.item() == pytest.approx(-0.5 * sum(ENTROPIES) / 2, abs=VALUE_TOLERANCE)


def test_hinge_penalizes_only_entropy_below_threshold():
    # log 3 = 1.0986 is above the threshold 1.07 (no penalty); 1.5 log 2 = 1.0397 is below it.
    value = term(penalty(beta=2.0, threshold=1.07), LOGITS)
    assert value.item() == pytest.approx(2.0 * (0 + (1.07 - ENTROPIES[1])) / 2,
                                         abs=VALUE_TOLERANCE)


def analytic_gradient(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """d(-beta * mean_b H_b)/dz = beta / B * p_i (log p_i + H),
    from dH/dz_i = -p_i (log p_i + H)."""
    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(dim=1, keepdim=True)
    return beta / len(logits) * p * (log_p + entropy)


def test_gradient_matches_the_analytic_formula():
    logits = 2 * torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits.requires_grad_(True)
    term(penalty(beta=1.5, num_classes=5), logits).backward()
    torch.testing.assert_close(logits.grad, analytic_gradient(logits.detach(), 1.5),
                               **GRADIENT_TOLERANCE)


def test_hinge_gradient_is_zero_above_threshold_and_the_plain_one_below():
    logits = LOGITS.clone().requires_grad_(True)
    term(penalty(beta=2.0, threshold=1.07), logits).backward()
    assert torch.equal(logits.grad[0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(logits.grad[1], analytic_gradient(LOGITS, 2.0)[1],
                               **GRADIENT_TOLERANCE)


def test_annealing_ramps_beta_linearly_over_anneal_epochs():
    # 4 epochs, anneal over 2: progress p is p * 4 epochs done, beta = 3 * min(1, p * 4 / 2).
    regularizer = penalty(epochs=4, beta=3.0, anneal_epochs=2)
    for progress, beta in [(0.0, 0.0), (0.125, 0.75), (0.25, 1.5), (0.5, 3.0), (0.9, 3.0)]:
        assert regularizer.beta_at(progress) == pytest.approx(beta)
        expected = -beta * sum(ENTROPIES) / 2
        assert term(regularizer, LOGITS, progress).item() == pytest.approx(expected,
                                                                        abs=VALUE_TOLERANCE)
    assert penalty(epochs=4, beta=3.0).beta_at(0.0) == 3.0  # anneal_epochs 0: off


def test_check_refuses_annealing_longer_than_the_run():
    with pytest.raises(ConfigError, match=r"regularizer\.confidence_penalty\.anneal_epochs=5"):
        penalty(epochs=4, anneal_epochs=5)


def test_check_refuses_threshold_above_log_num_classes():
    penalty(num_classes=10, threshold=math.log(10))
    with pytest.raises(ConfigError, match=r"regularizer\.confidence_penalty\.threshold=2\.4"):
        penalty(num_classes=10, threshold=2.4)


def test_config_composes_with_defaults_and_overrides():
    settings = OmegaConf.to_object(compose_config(["regularizer=confidence_penalty"]))
    config = settings.regularizer["confidence_penalty"]
    assert (config.beta, config.threshold, config.anneal_epochs) == (1.0, None, 0.0)
    settings = OmegaConf.to_object(compose_config([
        "regularizer=confidence_penalty", "regularizer.confidence_penalty.beta=0.1",
        "regularizer.confidence_penalty.threshold=0.5",
        "regularizer.confidence_penalty.anneal_epochs=2"]))
    config = settings.regularizer["confidence_penalty"]
    assert (config.beta, config.threshold, config.anneal_epochs) == (0.1, 0.5, 2.0)


@pytest.mark.parametrize("override,key", [
    ("beta=-1", "beta"), ("threshold=0", "threshold"), ("anneal_epochs=-1", "anneal_epochs"),
])
def test_bad_values_are_refused_naming_the_key(override, key):
    cfg = compose_config(["regularizer=confidence_penalty",
                          f"regularizer.confidence_penalty.{override}"])
    with pytest.raises(ConfigError, match=rf"regularizer\.confidence_penalty\.{key}="):
        OmegaConf.to_object(cfg)


COMMON = ["trainer.epochs=5", "trainer.num_threads=1", "seed=0"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return train_in_process(tmp_path_factory.mktemp("none") / "run", ["regularizer=none", *COMMON])


@pytest.fixture(scope="module")
def penalized(tmp_path_factory):
    return train_in_process(tmp_path_factory.mktemp("cp") / "run",
                            ["regularizer=confidence_penalty", *COMMON])


@pytest.mark.slow
def test_penalty_lowers_confidence_and_raises_entropy_on_digits(baseline, penalized):
    # Measured (seeds 0-3, beta 1): confidence about 0.96 -> 0.43, entropy 0.11 -> 1.88 nats.
    assert penalized["test/mean_confidence"] < baseline["test/mean_confidence"] - 0.3
    assert penalized["test/entropy"] > baseline["test/entropy"] + 1.0
    assert penalized["test/acc"] > 0.9  # still learns the task


@pytest.mark.slow
def test_hinge_stops_pushing_once_entropy_reaches_threshold(tmp_path, baseline, penalized):
    hinged = train_in_process(tmp_path / "run", [
        "regularizer=confidence_penalty", "regularizer.confidence_penalty.threshold=0.5", *COMMON])
    # Measured: test entropy 0.68 nats, near the threshold 0.5, far from both the baseline's 0.11
    # and the plain penalty's 1.88.
    assert baseline["test/entropy"] + 0.3 < hinged["test/entropy"] < penalized["test/entropy"] - 0.8


@pytest.mark.slow
def test_a_run_with_the_preset_logs_a_negative_term_every_epoch(tmp_path):
    _, history = train_end_to_end(tmp_path, ["regularizer=confidence_penalty"])
    # Without a threshold the term is -beta * H: negative.
    assert all(record["train/loss_confidence_penalty"] < 0 for record in history)
