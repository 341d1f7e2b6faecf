"""Batch normalization: a BN layer between every hidden layer and its activation, running statistics
updated with the configured momentum in training and used in evaluation."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import build_model_of, compose_config, train_end_to_end
from regbench.config import ConfigError
from regbench.models.base import ModelOptions, hidden_block
from regbench.regularizers import REGULARIZERS, RunContext
from regbench.regularizers.batchnorm import BatchNormConfig

CONTEXT = RunContext(dataset="digits", model="mlp", num_classes=10, epochs=1, optimizer="sgd", val_size=180)


def norm_layer(width: int, kind: str, **config) -> nn.Module:
    options = ModelOptions()
    REGULARIZERS.get("batchnorm")(BatchNormConfig(**config)).configure_model(options)
    return options.norm(width, kind)


def test_running_statistics_follow_the_momentum_update_and_drive_eval_mode():
    bn = norm_layer(3, "linear", momentum=0.25, eps=1e-3)
    x = torch.tensor([[1.0, 0.0, -2.0], [3.0, 4.0, 2.0], [5.0, 2.0, 6.0], [7.0, 6.0, 2.0]])
    bn.train()(x)
    # Hand calculation: per-feature mean [4, 3, 2] and unbiased variance [20/3, 20/3, 32/3];
    # running = (1 - momentum) * running + momentum * batch, from running mean 0 and variance 1.
    mean = torch.tensor([4.0, 3.0, 2.0])
    var = torch.tensor([20 / 3, 20 / 3, 32 / 3])
    assert torch.allclose(bn.running_mean, 0.25 * mean)
    assert torch.allclose(bn.running_var, 0.75 + 0.25 * var)

    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, 0.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    batch = torch.tensor([[0.0, 1.0, 2.0], [10.0, -3.0, 4.0]])
    expected = (batch - 0.25 * mean) / torch.sqrt(0.75 + 0.25 * var + 1e-3) * bn.weight + bn.bias
    assert torch.allclose(bn.eval()(batch), expected.detach())
    # In train mode the same batch is normalized with its own statistics instead.
    assert not torch.allclose(bn.train()(batch), expected)


def test_layer_kinds_get_1d_and_2d_batchnorm_with_the_configured_constants():
    linear = norm_layer(8, "linear", momentum=0.3, eps=1e-4)
    conv = norm_layer(4, "conv", momentum=0.3, eps=1e-4)
    assert type(linear) is nn.BatchNorm1d and type(conv) is nn.BatchNorm2d
    assert (linear.num_features, linear.momentum, linear.eps) == (8, 0.3, 1e-4)
    assert (conv.num_features, conv.momentum, conv.eps) == (4, 0.3, 1e-4)


def build_mlp(hidden_sizes) -> nn.Module:
    sizes = ",".join(map(str, hidden_sizes))
    return build_model_of(["regularizer=batchnorm", f"model.hidden_sizes=[{sizes}]"])


def test_bn_sits_between_each_hidden_layer_and_its_activation():
    model = build_mlp([16, 16])
    blocks = [[type(m) for m in block] for block in model.body if isinstance(block, nn.Sequential)]
    assert blocks == [[nn.Linear, nn.BatchNorm1d, nn.ReLU]] * 2
    options = ModelOptions()
    REGULARIZERS.get("batchnorm")(BatchNormConfig()).configure_model(options)
    conv = hidden_block(nn.Conv2d(1, 4, 3), 4, "conv", options, is_last_hidden=True)
    assert [type(m) for m in conv] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_a_model_without_hidden_layers_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="regularizer='batchnorm'.*no hidden layer") as error:
        build_mlp([])
    assert "\n" not in str(error.value)


def test_config_composes_and_bad_values_are_refused():
    cfg = compose_config(["regularizer=batchnorm", "regularizer.batchnorm.momentum=0.01"])
    assert OmegaConf.to_object(cfg).regularizer["batchnorm"] == BatchNormConfig(momentum=0.01)
    for key, value in [("momentum", 0.0), ("momentum", 1.5), ("eps", 0.0)]:
        with pytest.raises(ConfigError, match=rf"regularizer\.batchnorm\.{key}={value}"):
            OmegaConf.to_object(compose_config(["regularizer=batchnorm",
                                                f"regularizer.batchnorm.{key}={value}"]))


@pytest.mark.slow
def test_a_run_with_dropout_and_batchnorm_completes_and_records_both(tmp_path):
    metrics, _ = train_end_to_end(tmp_path, ["regularizer=[dropout,batchnorm]"])
    assert metrics["regularizer"] == ["batchnorm", "dropout"]
