"""L2: the loss term is coef/2 * sum(w^2) over the weights (hand-computed), its gradient is SGD's
coupled weight decay, decoupled mode builds the AdamW weight-decay group, and training with it
lowers the weight norm on real data."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config, train_end_to_end, train_in_process
from regbench.config import ConfigError
from regbench.optim import param_groups
from regbench.regularizers import REGULARIZERS, RunContext, StepOutput
from regbench.regularizers.l2 import L2Config


def small_model() -> nn.Sequential:
    """Linear(2, 2) -> BatchNorm1d(2) -> Linear(2, 1) with hand-picked parameters."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -4.0]]))  # squares: 30
        model[0].bias.copy_(torch.tensor([1.0, -1.0]))  # 2
        model[1].weight.copy_(torch.tensor([2.0, 1.0]))  # 5
        model[1].bias.copy_(torch.tensor([0.5, 0.5]))  # 0.5
        model[2].weight.copy_(torch.tensor([[1.0, -2.0]]))  # 5
        model[2].bias.copy_(torch.tensor([3.0]))  # 9
    return model


def l2(model: nn.Module, **config):
    regularizer = REGULARIZERS.get("l2")(L2Config(**config))
    regularizer.on_model_built(model)
    return regularizer


def term(model: nn.Module, **config) -> dict[str, torch.Tensor]:
    step = StepOutput(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1),
                      torch.zeros(1, 2), model, epoch=0, progress=0.0)
    return l2(model, **config).loss_terms(step)


def test_term_is_half_coef_times_sum_of_squared_weights():
    terms = term(small_model(), coef=0.1)
    assert list(terms) == ["l2"]
    assert terms["l2"].item() == pytest.approx(0.05 * (30 + 5))


def test_without_exclusion_biases_and_norm_parameters_count_too():
    terms = term(small_model(), coef=0.1, exclude_bias_and_norm=False)
    assert terms["l2"].item() == pytest.approx(0.05 * (30 + 2 + 5 + 0.5 + 5 + 9))


def test_term_gradient_is_sgd_coupled_weight_decay():
    """One SGD step on the term equals torch's SGD(weight_decay=coef) step on the weights."""
    with_term, with_decay = small_model(), small_model()
    inputs = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, 0.3]])

    def task_loss(model):
        return model(inputs).pow(2).mean()

    SGD = torch.optim.SGD
    optimizer = SGD(with_term.parameters(), lr=0.1)
    (task_loss(with_term) + term(with_term, coef=0.01)["l2"]).backward()
    optimizer.step()
    weights = [with_decay[0].weight, with_decay[2].weight]
    others = [p for p in with_decay.parameters() if all(p is not w for w in weights)]
    optimizer = SGD([{"params": weights, "weight_decay": 0.01}, {"params": others}], lr=0.1)
    task_loss(with_decay).backward()
    optimizer.step()
    for a, b in zip(with_term.parameters(), with_decay.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def group_of(groups, parameter) -> dict:
    return next(g for g in groups if any(p is parameter for p in g["params"]))


def test_decoupled_puts_exactly_the_weights_in_the_weight_decay_group():
    model = small_model()
    groups = param_groups(model, [l2(model, coef=0.05, decoupled=True)])
    decayed = [g for g in groups if "weight_decay" in g]
    assert len(decayed) == 1 and decayed[0]["weight_decay"] == 0.05
    assert {id(p) for p in decayed[0]["params"]} == {id(model[0].weight), id(model[2].weight)}
    for parameter in (model[0].bias, model[1].weight, model[1].bias, model[2].bias):
        assert "weight_decay" not in group_of(groups, parameter)
    # Decoupled decay happens in the optimizer, so there is no loss term.
    assert term(model, decoupled=True) == {}


def test_decoupled_without_exclusion_decays_every_parameter():
    model = small_model()
    groups = param_groups(model, [l2(model, decoupled=True, exclude_bias_and_norm=False)])
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4
    assert len(groups[0]["params"]) == 6


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_decoupled_is_refused_unless_the_optimizer_is_adamw(optimizer):
    def context(name):
        return RunContext(dataset="digits", model="mlp", num_classes=10, epochs=1, optimizer=name, val_size=180)

    regularizer = REGULARIZERS.get("l2")(L2Config(decoupled=True))
    with pytest.raises(ConfigError, match=rf"regularizer\.l2\.decoupled=True.*adamw.*{optimizer}"):
        regularizer.setup(context(optimizer))
    regularizer.setup(context("adamw"))
    REGULARIZERS.get("l2")(L2Config()).setup(context(optimizer))


def test_config_composes_and_bad_values_are_refused():
    cfg = compose_config(["regularizer=l2", "regularizer.l2.coef=0.001"])
    assert OmegaConf.to_object(cfg).regularizer["l2"] == L2Config(coef=0.001)
    with pytest.raises(ConfigError, match=r"regularizer\.l2\.coef=-1"):
        OmegaConf.to_object(compose_config(["regularizer=l2", "regularizer.l2.coef=-1"]))


@pytest.mark.slow
def test_l2_lowers_the_weight_norm_on_digits(tmp_path):
    baseline = train_in_process(tmp_path / "none", ["regularizer=none"])
    penalized = train_in_process(tmp_path / "l2", ["regularizer=l2", "regularizer.l2.coef=0.01"])
    assert penalized["test/weight_norm"] < 0.95 * baseline["test/weight_norm"]
    history = [json.loads(line) for line in (tmp_path / "l2" / "history.jsonl").open()]
    assert all(record["train/loss_l2"] > 0 for record in history)


@pytest.mark.slow
def test_decoupled_weight_decay_with_adamw_lowers_the_weight_norm(tmp_path):
    common = ["optimizer=adamw", "optimizer.lr=0.003"]
    baseline = train_in_process(tmp_path / "none", [*common, "regularizer=none"])
    decayed = train_in_process(tmp_path / "l2", [*common, "regularizer=l2", "regularizer.l2.coef=5",
                                                 "regularizer.l2.decoupled=true"])
    assert decayed["test/weight_norm"] < 0.95 * baseline["test/weight_norm"]
    history = [json.loads(line) for line in (tmp_path / "l2" / "history.jsonl").open()]
    assert "train/loss_l2" not in history[0]


@pytest.mark.slow
def test_a_run_with_the_l2_preset_completes(tmp_path):
    train_end_to_end(tmp_path, ["regularizer=l2"])
