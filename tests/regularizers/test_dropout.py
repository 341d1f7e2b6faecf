"""Dropout: each kind is the identity in eval mode and has the documented noise statistics in train
mode; the layers land where models/base.py says; a dropout that would add nothing is refused."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import (
    build_model_of,
    compose_config,
    regularizer_overrides,
    train_end_to_end,
    train_in_process,
)
from regbench.config import ConfigError
from regbench.models.base import DropoutPlacement, ModelOptions, hidden_block
from regbench.models.layers import GaussianDropout, Uout
from regbench.regularizers import REGULARIZERS, RunContext
from regbench.regularizers.batchnorm import BatchNormConfig
from regbench.regularizers.dropout import DropoutConfig, DropoutKind, hidden_dropout_layer

CONTEXT = RunContext(dataset="digits", model="mlp", num_classes=10, epochs=1, optimizer="sgd", val_size=180)
LAYER_TYPES = {"standard": nn.Dropout, "gaussian": GaussianDropout, "uout": Uout,
               "channel": nn.Dropout2d}


def layer(kind: str, **options) -> nn.Module:
    cfg = DropoutConfig(kind=DropoutKind(kind), **options)
    return hidden_dropout_layer(cfg, "conv" if kind == "channel" else "linear")


def ones(kind: str) -> torch.Tensor:
    """Many units, so sample statistics are close to the distribution's."""
    return torch.ones(64, 32, 16, 16) if kind == "channel" else torch.ones(512, 1024)


# weighted_channel has its own tests (test_weighted_channel_dropout.py): it needs ReLU feature maps.
@pytest.mark.parametrize("kind", [k.value for k in DropoutKind if k != DropoutKind.weighted_channel])
def test_every_kind_is_the_identity_in_eval_mode_and_noisy_in_train_mode(kind):
    torch.manual_seed(0)
    dropout = layer(kind)
    assert type(dropout) is LAYER_TYPES[kind]
    x = torch.randn(ones(kind).shape)
    assert torch.equal(dropout.eval()(x), x)
    assert not torch.equal(dropout.train()(x), x)


def test_standard_drops_a_fraction_p_and_rescales_survivors():
    torch.manual_seed(0)
    out = layer("standard", p=0.3).train()(ones("standard"))
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.7))


def test_gaussian_noise_has_mean_one_and_variance_p_over_1_minus_p():
    torch.manual_seed(0)
    out = layer("gaussian", p=0.2).train()(ones("gaussian"))
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    assert out.var().item() == pytest.approx(0.2 / 0.8, rel=0.02)


def test_uout_noise_is_uniform_in_one_plus_minus_beta():
    torch.manual_seed(0)
    x = 2 * ones("uout")  # x + x*r with r ~ U(-beta, beta) is uniform in [x(1-beta), x(1+beta)]
    out = layer("uout", beta=0.3).train()(x)
    assert out.min().item() >= 2 * 0.7 and out.max().item() <= 2 * 1.3
    assert out.min().item() == pytest.approx(2 * 0.7, abs=1e-3)
    assert out.max().item() == pytest.approx(2 * 1.3, abs=1e-3)
    assert out.mean().item() == pytest.approx(2.0, abs=0.01)
    assert out.var().item() == pytest.approx(4 * 0.3 ** 2 / 3, rel=0.02)
    # Uniform: each tenth of the range holds a tenth of the values.
    counts = torch.histc(out, bins=10, min=1.4, max=2.6) / out.numel()
    assert torch.allclose(counts, torch.full((10,), 0.1), atol=0.01)


def test_channel_dropout_drops_whole_feature_maps():
    torch.manual_seed(0)
    out = layer("channel", p=0.5).train()(ones("channel"))
    per_map = out.flatten(2)
    assert torch.equal(per_map.min(dim=2).values, per_map.max(dim=2).values)  # constant maps
    assert set(per_map[:, :, 0].unique().tolist()) == {0.0, 2.0}


def test_kinds_apply_to_their_layer_kind_only():
    assert layer("channel") is not None
    assert hidden_dropout_layer(DropoutConfig(kind=DropoutKind.channel), "linear") is None
    for kind in ("standard", "gaussian", "uout"):
        assert hidden_dropout_layer(DropoutConfig(kind=DropoutKind(kind)), "conv") is None


def build_mlp(names: list[str], configs: dict, hidden_sizes=(16, 16, 16)) -> nn.Module:
    """The MLP with the given regularizers, as a run builds it."""
    sizes = ",".join(map(str, hidden_sizes))
    return build_model_of([*regularizer_overrides({name: configs[name] for name in names}),
                           f"model.hidden_sizes=[{sizes}]"])


def hidden_blocks(model: nn.Module) -> list[list[type]]:
    return [[type(m) for m in block] for block in model.body if isinstance(block, nn.Sequential)]


def test_without_normalization_every_hidden_block_ends_with_dropout():
    for placement in DropoutPlacement:
        model = build_mlp(["dropout"], {"dropout": DropoutConfig(placement=placement)})
        assert hidden_blocks(model) == [[nn.Linear, nn.ReLU, nn.Dropout]] * 3


def test_after_bn_puts_dropout_only_after_the_last_normalized_layer():
    configs = {"dropout": DropoutConfig(placement=DropoutPlacement.after_bn),
               "batchnorm": BatchNormConfig()}
    model = build_mlp(["dropout", "batchnorm"], configs)
    assert hidden_blocks(model) == [[nn.Linear, nn.BatchNorm1d, nn.ReLU]] * 2 + [
        [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]]


def test_before_bn_puts_dropout_in_every_block_ahead_of_the_next_normalization():
    configs = {"dropout": DropoutConfig(placement=DropoutPlacement.before_bn),
               "batchnorm": BatchNormConfig()}
    # The order of the regularizers does not matter.
    model = build_mlp(["batchnorm", "dropout"], configs)
    assert hidden_blocks(model) == [[nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]] * 3


def test_input_dropout_only_when_asked_and_element_wise():
    def input_layer(model):
        return model.body[1]

    without = build_mlp(["dropout"], {"dropout": DropoutConfig()})
    assert isinstance(input_layer(without), nn.Identity)
    for kind, expected in [("standard", nn.Dropout), ("channel", nn.Dropout),
                           ("gaussian", GaussianDropout), ("uout", nn.Dropout)]:
        cfg = DropoutConfig(kind=DropoutKind(kind), input_p=0.2)
        options = ModelOptions()
        REGULARIZERS.get("dropout")(cfg).configure_model(options)
        layer = options.input_dropout()
        assert type(layer) is expected and layer.p == 0.2


def test_conv_blocks_get_channel_dropout_and_linear_kinds_leave_them_alone():
    def conv_block(kind: str) -> list[type]:
        options = ModelOptions()
        REGULARIZERS.get("dropout")(DropoutConfig(kind=DropoutKind(kind))).configure_model(options)
        block = hidden_block(nn.Conv2d(1, 4, 3), 4, "conv", options, is_last_hidden=False)
        return [type(m) for m in block]

    assert conv_block("channel") == [nn.Conv2d, nn.ReLU, nn.Dropout2d]
    assert conv_block("standard") == [nn.Conv2d, nn.ReLU]


def test_a_model_left_without_dropout_is_refused_in_one_line():
    message = r"regularizer\.dropout\.kind='channel'.*no conv hidden layer"
    with pytest.raises(ConfigError, match=message) as error:
        build_mlp(["dropout"], {"dropout": DropoutConfig(kind=DropoutKind.channel)})
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"kind='standard'.*no linear hidden layer"):
        build_mlp(["dropout"], {"dropout": DropoutConfig()}, hidden_sizes=())


def test_config_composes_and_bad_values_are_refused():
    cfg = compose_config(["regularizer=dropout", "regularizer.dropout.kind=uout",
                          "regularizer.dropout.beta=0.2"])
    dropout = OmegaConf.to_object(cfg).regularizer["dropout"]
    assert dropout == DropoutConfig(kind=DropoutKind.uout, beta=0.2)
    assert dropout.p == 0.5 and dropout.placement == DropoutPlacement.after_bn
    for key, value in [("p", 1.5), ("p", 1.0), ("input_p", -0.1), ("beta", 1.0)]:
        with pytest.raises(ConfigError, match=rf"regularizer\.dropout\.{key}={value}"):
            OmegaConf.to_object(compose_config(["regularizer=dropout",
                                                f"regularizer.dropout.{key}={value}"]))


@pytest.mark.slow
def test_channel_dropout_on_lenet_needs_before_bn_next_to_batchnorm(tmp_path):
    overrides = ["model=lenet", "regularizer=[dropout,batchnorm]", "regularizer.dropout.kind=channel",
                 "trainer.epochs=1"]
    # after_bn keeps dropout on the last hidden layer only, a linear one: channel adds nothing.
    with pytest.raises(ConfigError, match="placement=before_bn"):
        train_in_process(tmp_path / "after", overrides)
    metrics = train_in_process(tmp_path / "before",
                               [*overrides, "regularizer.dropout.placement=before_bn"])
    assert metrics["status"] == "completed"


@pytest.mark.slow
def test_a_run_with_gaussian_input_dropout_completes(tmp_path):
    metrics, _ = train_end_to_end(tmp_path, ["regularizer=dropout", "regularizer.dropout.kind=gaussian",
                                           "regularizer.dropout.input_p=0.2"])
    assert metrics["regularizer"] == ["dropout"]
