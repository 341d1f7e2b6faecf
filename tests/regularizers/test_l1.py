"""L1: the loss term is coef * sum(|w|) over the weights (hand-computed), its gradient is
coef * sign(w), and training with it on real data pushes weights toward zero."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config, train_end_to_end, train_in_process
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS, StepOutput
from regbench.regularizers.l1 import L1Config


def small_model() -> nn.Sequential:
    """Linear(2, 2) -> BatchNorm1d(2) -> Linear(2, 1) with hand-picked parameters."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, -4.0]]))  # |w|: 7.5
        model[0].bias.copy_(torch.tensor([1.0, -1.0]))  # 2
        model[1].weight.copy_(torch.tensor([2.0, 1.0]))  # 3
        model[1].bias.copy_(torch.tensor([-0.5, 0.5]))  # 1
        model[2].weight.copy_(torch.tensor([[1.0, -3.0]]))  # 4
        model[2].bias.copy_(torch.tensor([3.0]))  # 3
    return model


def term(model: nn.Module, **config) -> dict[str, torch.Tensor]:
    regularizer = REGULARIZERS.get("l1")(L1Config(**config))
    regularizer.on_model_built(model)
    step = StepOutput(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1),
                      torch.zeros(1, 2), model, epoch=0, progress=0.0)
    return regularizer.loss_terms(step)


def test_term_is_coef_times_sum_of_absolute_weights():
    terms = term(small_model(), coef=0.1)
    assert list(terms) == ["l1"]
    assert terms["l1"].item() == pytest.approx(0.1 * (7.5 + 4))


def test_without_exclusion_biases_and_norm_parameters_count_too():
    terms = term(small_model(), coef=0.1, exclude_bias_and_norm=False)
    assert terms["l1"].item() == pytest.approx(0.1 * (7.5 + 2 + 3 + 1 + 4 + 3))


def test_gradient_is_coef_times_sign_of_the_weights_only():
    model = small_model()
    term(model, coef=0.1)["l1"].backward()
    assert torch.equal(model[0].weight.grad, 0.1 * model[0].weight.sign())
    assert torch.equal(model[2].weight.grad, 0.1 * model[2].weight.sign())
    for parameter in (model[0].bias, model[1].weight, model[1].bias, model[2].bias):
        assert parameter.grad is None


def test_config_composes_and_bad_values_are_refused():
    cfg = compose_config(["regularizer=l1", "regularizer.l1.coef=0.001",
                          "regularizer.l1.exclude_bias_and_norm=false"])
    assert OmegaConf.to_object(cfg).regularizer["l1"] == L1Config(coef=0.001,
                                                                  exclude_bias_and_norm=False)
    with pytest.raises(ConfigError, match=r"regularizer\.l1\.coef=-0\.1"):
        OmegaConf.to_object(compose_config(["regularizer=l1", "regularizer.l1.coef=-0.1"]))


def l1_norm_of_weights(run_dir) -> float:
    """sum |w| over the final weights; the run's metrics hold only the L2 norm, so read last.pt."""
    state = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim > 1]
    return sum(v.abs().sum().item() for v in weights)


@pytest.mark.slow
def test_l1_shrinks_the_absolute_weights_on_digits(tmp_path):
    train_in_process(tmp_path / "none", ["regularizer=none"])
    train_in_process(tmp_path / "l1", ["regularizer=l1", "regularizer.l1.coef=3e-4"])
    assert l1_norm_of_weights(tmp_path / "l1") < 0.9 * l1_norm_of_weights(tmp_path / "none")
    history = [json.loads(line) for line in (tmp_path / "l1" / "history.jsonl").open()]
    assert all(record["train/loss_l1"] > 0 for record in history)


@pytest.mark.slow
def test_a_run_with_the_l1_preset_completes(tmp_path):
    train_end_to_end(tmp_path, ["regularizer=l1"])
