"""Weighted channel dropout (Hou & Wang 2019): the selection favours high-scoring channels as the
weighted-sampling math says, rescaling keeps each image's total activation, eval is the identity,
the layer sits only after the last conv block, the MLP is refused in one line, a real run trains."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from conftest import train_in_process
from regbench.config import ConfigError
from regbench.models import build_model
from regbench.models.base import ModelOptions
from regbench.models.cifar_resnet import ResNetConfig
from regbench.models.convnet import ConvNetConfig
from regbench.models.lenet import LeNetConfig
from regbench.models.mlp import MLPConfig
from regbench.models.torchvision_resnet import ResNet18Config
from regbench.regularizers import REGULARIZERS, RunContext
from regbench.models.layers import WeightedChannelDropout
from regbench.regularizers.dropout import DropoutConfig, DropoutKind


def exact_keep_probabilities(weights: list[float], kept: int) -> list[float]:
    """P(channel i among the `kept` chosen) for successive sampling without replacement with
    probability proportional to weight (what the keys r^(1/w) draw: Efraimidis & Spirakis 2006),
    by enumerating every ordered draw."""
    n = len(weights)
    probabilities = [0.0] * n
    for order in itertools.permutations(range(n), kept):
        p, left = 1.0, sum(weights)
        for index in order:
            p *= weights[index] / left
            left -= weights[index]
        for index in order:
            probabilities[index] += p
    return probabilities


def test_high_scoring_channels_are_kept_as_often_as_weighted_sampling_says():
    torch.manual_seed(0)
    scores = [4.0, 2.0, 1.0, 0.5, 0.5]
    maps = torch.tensor(scores)[None, :, None, None].expand(20000, 5, 2, 2).contiguous()
    layer = WeightedChannelDropout(keep_ratio=0.4, rng_p=1.0).train()  # 2 of 5 kept, every image
    kept = (layer(maps).sum(dim=(2, 3)) > 0).float().mean(dim=0)
    expected = exact_keep_probabilities(scores, 2)
    assert kept.tolist() == pytest.approx(expected, abs=0.015)
    assert kept[0] > kept[1] > kept[2] > kept[3]  # the higher the score, the more often kept


def test_kept_channels_are_rescaled_by_total_over_kept_score():
    torch.manual_seed(1)
    x = torch.rand(8, 6, 3, 3) * torch.arange(1, 7).float()[None, :, None, None]
    out = WeightedChannelDropout(keep_ratio=0.5, rng_p=1.0).train()(x)
    scores = x.mean(dim=(2, 3))
    kept = out.sum(dim=(2, 3)) > 0
    assert (kept.sum(dim=1) == 3).all()  # round(0.5 * 6) channels per image
    scale = scores.sum(dim=1) / (scores * kept).sum(dim=1)
    assert torch.allclose(out, x * kept[:, :, None, None] * scale[:, None, None, None])
    assert torch.allclose(out.mean(dim=(2, 3)).sum(dim=1), scores.sum(dim=1))


def test_random_number_test_filters_a_share_rng_p_of_the_images_and_eval_is_identity():
    torch.manual_seed(2)
    x = torch.rand(4000, 8, 2, 2) + 0.1
    layer = WeightedChannelDropout(keep_ratio=0.5, rng_p=0.3)
    filtered = (layer.train()(x).sum(dim=(2, 3)) == 0).any(dim=1).float().mean().item()
    assert filtered == pytest.approx(0.3, abs=0.03)
    assert torch.equal(layer.eval()(x), x)


def build(model_cfg, input_shape=(1, 8, 8), **dropout) -> nn.Module:
    regularizer = REGULARIZERS.get("dropout")(DropoutConfig(kind=DropoutKind.weighted_channel, **dropout))
    regularizer.setup(RunContext(dataset="digits", model=model_cfg.name, num_classes=10, epochs=1,
                                 optimizer="sgd", val_size=180))
    options = ModelOptions()
    regularizer.configure_model(options)
    model = build_model(model_cfg, input_shape, 10, options)
    regularizer.on_model_built(model)
    return model


@pytest.mark.parametrize("cfg, where", [
    (LeNetConfig(), "body.conv_dropout"), (ConvNetConfig(), "body.conv_dropout"),
    (ResNetConfig(), "body.conv_dropout"), (ResNet18Config(), "body.resnet.avgpool.0")])
def test_one_layer_after_the_last_conv_block_and_nowhere_else(cfg, where):
    model = build(cfg)
    found = [name for name, m in model.named_modules() if isinstance(m, WeightedChannelDropout)]
    assert found == [where]
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def test_mlp_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"kind='weighted_channel'.*'mlp' has no convolutional") as error:
        build(MLPConfig(hidden_sizes=[16]))
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_a_real_convnet_run_trains_with_weighted_channel_dropout(tmp_path):
    common = ["model=convnet", "trainer.epochs=4", "seed=0"]
    plain = train_in_process(tmp_path / "none", common)
    wcd = train_in_process(tmp_path / "wcd", [*common, "regularizer=dropout",
                                               "regularizer.dropout.kind=weighted_channel"])
    # It learns (chance is 0.1) and the noise changes the result against the same seed.
    assert wcd["status"] == "completed" and wcd["test/acc"] > 0.85
    assert wcd["test/nll"] != plain["test/nll"]
