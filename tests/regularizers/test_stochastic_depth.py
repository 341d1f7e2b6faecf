"""Stochastic depth: torchvision StochasticDepth layers on every residual branch with the linear
decay rule, random per example in training and off in eval; refused for models without residual
blocks; trains on digits and differs from none."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.ops import StochasticDepth

from conftest import compose_config, train_end_to_end, train_in_process
from regbench.config import ConfigError
from regbench.models import build_model
from regbench.models.base import ModelOptions
from regbench.models.cifar_resnet import ResNetConfig
from regbench.models.torchvision_resnet import ResNet18Config


def drop_layers(model: torch.nn.Module) -> list[StochasticDepth]:
    return [m for m in model.modules() if isinstance(m, StochasticDepth)]


@pytest.mark.parametrize("config, blocks", [(ResNetConfig(depth=20), 9), (ResNet18Config(), 8)])
def test_linear_decay_rule(config, blocks):
    model = build_model(config, (1, 8, 8), 10, ModelOptions(stochastic_depth_survival=0.5))
    layers = drop_layers(model)
    # Huang et al. 2016: block l of L survives with 1 - l/L * (1 - p_L), so drops with l/L * 0.5.
    assert [layer.p for layer in layers] == pytest.approx([l / blocks * 0.5 for l in range(1, blocks + 1)])
    assert all(layer.mode == "row" for layer in layers)
    assert drop_layers(build_model(config, (1, 8, 8), 10, ModelOptions())) == []


def test_random_per_example_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = build_model(ResNetConfig(depth=20), (1, 8, 8), 10, ModelOptions(stochastic_depth_survival=0.5))
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    # Train mode with BatchNorm in eval (its batch statistics would differ anyway): only the
    # dropped branches differ between two forwards.
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    assert not torch.equal(model(x), model(x))


def test_p_last_outside_zero_one_is_refused():
    cfg = compose_config(["regularizer=stochastic_depth", "regularizer.stochastic_depth.p_last=1"])
    with pytest.raises(ConfigError, match=r"regularizer\.stochastic_depth\.p_last=1"):
        OmegaConf.to_object(cfg)


def test_model_without_residual_blocks_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as error:
        train_in_process(tmp_path, ["regularizer=stochastic_depth", "model=mlp"])
    assert "\n" not in str(error.value) and "model=mlp" in str(error.value)


@pytest.mark.slow
def test_stochastic_depth_trains_a_resnet_and_differs_from_none(tmp_path):
    common = ["model=resnet", "trainer.epochs=3", "seed=0"]
    baseline = train_in_process(tmp_path / "none", ["regularizer=none", *common])
    dropped = train_in_process(tmp_path / "sd", ["regularizer=stochastic_depth", *common])
    assert dropped["test/acc"] > 0.8
    assert dropped["test/nll"] != pytest.approx(baseline["test/nll"], rel=1e-3)


@pytest.mark.slow
def test_a_cifar_resnet_run_with_stochastic_depth_completes(tmp_path):
    metrics, _ = train_end_to_end(tmp_path, ["regularizer=stochastic_depth", "model=resnet"], epochs=1)
    assert metrics["regularizer"] == ["stochastic_depth"]
