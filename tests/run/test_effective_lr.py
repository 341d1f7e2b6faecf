"""train/effective_lr and train/bn_weight_norm (van Laarhoven 2017): the layers feeding BatchNorm
are scale-invariant, the value is lr / ||w||^2 by hand, and on a real digits run L2 shrinks those
weights and raises their effective learning rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import read_history, train_in_process
from regbench.models import build_model
from regbench.models.base import ModelOptions
from regbench.models.cifar_resnet import ResNetConfig
from regbench.models.mlp import MLPConfig
from regbench.regularizers import REGULARIZERS
from regbench.regularizers.batchnorm import BatchNormConfig
from regbench.run.probes import layers_feeding_bn, scale_invariance_record

CPU = torch.device("cpu")


def bn_mlp() -> nn.Module:
    options = ModelOptions()
    REGULARIZERS.get("batchnorm")(BatchNormConfig()).configure_model(options)
    return build_model(MLPConfig(hidden_sizes=[16, 16]), (1, 8, 8), 10, options)


def test_a_layer_feeding_bn_gives_the_same_output_at_any_weight_scale():
    torch.manual_seed(0)
    model = bn_mlp().train()  # batch statistics, as in training
    x = torch.randn(32, 1, 8, 8)
    reference = model(x)
    with torch.no_grad():
        model.body.fc1[0].weight.mul_(7.0)
    assert torch.allclose(model(x), reference, atol=1e-4)


def test_the_layers_feeding_bn_are_found_and_the_head_is_not():
    model = bn_mlp()
    assert layers_feeding_bn(model, torch.randn(4, 1, 8, 8)) == [model.body.fc1[0], model.body.fc2[0]]
    # A BN fed through another op is not the layer's direct output: not counted.
    indirect = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.BatchNorm1d(4))
    assert layers_feeding_bn(indirect, torch.randn(4, 4)) == []
    resnet = build_model(ResNetConfig(depth=8), (1, 8, 8), 10, ModelOptions())
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    assert layers_feeding_bn(resnet, torch.randn(2, 1, 8, 8)) == convs  # stem + 2 per block


def test_effective_lr_is_lr_over_squared_norm_averaged_over_layers():
    model = bn_mlp()
    with torch.no_grad():
        model.body.fc1[0].weight.fill_(0.5)  # 16 x 64 entries: ||w||^2 = 1024 * 0.25 = 256
        model.body.fc2[0].weight.fill_(1.0)  # 16 x 16: ||w||^2 = 256
        model.body.fc2[0].weight[0, :4] = 0.0  # ||w||^2 = 252
    batches = [(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), None)]
    record = scale_invariance_record(model, 0.1, batches, CPU, lambda x: x.float())
    assert record["train/effective_lr"] == pytest.approx((0.1 / 256 + 0.1 / 252) / 2)
    assert record["train/bn_weight_norm"] == pytest.approx((16 + 252 ** 0.5) / 2)
    plain = build_model(MLPConfig(hidden_sizes=[16]), (1, 8, 8), 10, ModelOptions())
    assert scale_invariance_record(plain, 0.1, batches, CPU, lambda x: x.float()) == {}


@pytest.mark.slow
def test_l2_shrinks_the_bn_layers_weights_and_raises_their_effective_lr(tmp_path):
    common = ["regularizer=[batchnorm,l2]", "optimizer.schedule=none", "trainer.epochs=10",
              "model.hidden_sizes=[128,128]"]
    weak = read_history(_run(tmp_path / "weak", [*common, "regularizer.l2.coef=0"]))
    strong = read_history(_run(tmp_path / "strong", [*common, "regularizer.l2.coef=1e-2"]))
    assert strong[-1]["train/bn_weight_norm"] < 0.8 * weak[-1]["train/bn_weight_norm"]
    assert strong[-1]["train/effective_lr"] > 1.5 * weak[-1]["train/effective_lr"]
    # Without L2 the norm only grows (each step is orthogonal to w for a scale-invariant layer).
    norms = [record["train/bn_weight_norm"] for record in weak]
    assert norms == sorted(norms)


def _run(folder, overrides):
    train_in_process(folder, overrides)
    return folder
