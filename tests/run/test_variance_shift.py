"""test/variance_shift_max/mean (Li et al. 2019): the ratio against a hand calculation, the BN
layers it looks at found in execution order, and the claimed effect on real digits runs: dropout
before BN shifts the variance, Uout's small noise barely does, dropout after the last BN has no
BN to shift."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import train_in_process
from regbench.models import build_model
from regbench.models.base import DropoutPlacement, ModelOptions
from regbench.models.cifar_resnet import ResNetConfig
from regbench.regularizers import REGULARIZERS
from regbench.regularizers.dropout import DropoutConfig
from regbench.run.probes import bn_after_dropout, variance_shift_metrics

CPU = torch.device("cpu")


def batches(count: int, size: int, mean: float, std: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return [(mean + std * torch.randn(size, 4, generator=generator), None) for _ in range(count)]


def test_shift_of_dropout_before_bn_matches_the_hand_calculation():
    # y = x * m / (1 - p), x ~ N(1, 1), m ~ Bernoulli(1 - p): in training
    # Var y = E[x^2] / (1 - p) - E[x]^2 = 2 / 0.5 - 1 = 3; in eval y = x, Var y = 1. Ratio 3.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(4, momentum=None))  # cumulative average
    model.train()
    with torch.no_grad():
        for x, _ in batches(200, 256, mean=1.0, std=1.0, seed=0):
            model(x)
    metrics = variance_shift_metrics(model, batches(20, 256, 1.0, 1.0, seed=1), CPU, lambda x: x)
    assert metrics["test/variance_shift_max"] == pytest.approx(3.0, rel=0.03)
    assert metrics["test/variance_shift_mean"] == pytest.approx(3.0, rel=0.03)
    assert model.training  # the probe puts the mode back


def test_no_metric_without_a_bn_after_dropout():
    after = nn.Sequential(nn.BatchNorm1d(4), nn.Dropout(0.5))
    assert variance_shift_metrics(after, batches(2, 8, 0, 1, 0), CPU, lambda x: x) == {}
    assert variance_shift_metrics(nn.Sequential(nn.BatchNorm1d(4)), batches(2, 8, 0, 1, 0), CPU,
                                  lambda x: x) == {}


def test_followers_are_found_in_execution_order_not_registration_order():
    # A ResNet block registers its dropout after bn2 but runs it between bn1 and bn2.
    regularizer = REGULARIZERS.get("dropout")(DropoutConfig(placement=DropoutPlacement.before_bn,
                                                            kind="channel"))
    options = ModelOptions()
    regularizer.configure_model(options)
    model = build_model(ResNetConfig(depth=8), (1, 8, 8), 10, options)
    followers = bn_after_dropout(model, torch.randn(2, 1, 8, 8))
    names = {module: name for name, module in model.named_modules()}
    found = [names[m] for m in followers]
    # Stem BN and stage-1 bn1 run before the first dropout; everything after it follows it.
    assert found[0] == "body.stage1.0.bn2"
    assert "body.stem.1" not in found and "body.stage1.0.bn1" not in found
    assert "body.stage2.0.bn1" in found


@pytest.mark.slow
def test_dropout_before_bn_shifts_the_variance_on_real_digits_runs(tmp_path):
    common = ["regularizer=[batchnorm,dropout]", "trainer.epochs=5", "model.hidden_sizes=[128,128]"]
    before = train_in_process(tmp_path / "before", [*common, "regularizer.dropout.placement=before_bn"])
    uout = train_in_process(tmp_path / "uout", [*common, "regularizer.dropout.placement=before_bn",
                                                "regularizer.dropout.kind=uout"])
    after = train_in_process(tmp_path / "after", common)
    # Measured: standard p = 0.5 before BN ~1.5; Uout (beta 0.1) ~1.0.
    assert before["test/variance_shift_max"] > 1.2
    assert uout["test/variance_shift_max"] == pytest.approx(1.0, abs=0.1)
    assert "test/variance_shift_max" not in after
