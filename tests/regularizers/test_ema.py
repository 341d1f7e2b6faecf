"""Model EMA: the average after k steps is the closed form of timm's warm-up decays, BatchNorm
buffers are copied, the average is checkpointed and resumes exactly, and on digits with a high
constant learning rate the average's test NLL is far below the trained weights'."""

from __future__ import annotations

import io
import logging
import re

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import (
    assert_resumes_exactly_after_sigterm,
    compose_config,
    read_history,
    train_end_to_end,
    train_in_process,
)
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS, RunContext
from regbench.regularizers.ema import EmaConfig, ema_decay, first_step_share, steps_to_reach

SMALL = ["model.hidden_sizes=[64]", "evaluation.calibrators=[]"]




def ema_of(model: nn.Module, **options):
    regularizer = REGULARIZERS.get("ema")(EmaConfig(**options))
    regularizer.setup(RunContext(dataset="digits", model="mlp", num_classes=2, epochs=1,
                                 optimizer="sgd"))
    regularizer.on_model_built(model)
    return regularizer


def averages_of(values: list[float], **options) -> list[float]:
    """The one weight of a 1x1 linear layer set to each value in turn, one EMA update after each."""
    model = nn.Linear(1, 1, bias=False)
    ema = ema_of(model, **options)
    averages = []
    for value in values:
        model.weight.data.fill_(value)
        ema.on_step_end(model)
        averages.append(ema.averaged_weights()["weight"].item())
    return averages


def test_ema_after_k_steps_equals_the_closed_form_with_warm_up_decays():
    # By hand, power 3/4, gamma 1: ema_1 = x_1 (a copy); d_1 = 1 - 2^-0.75 = 0.4053964;
    # ema_2 = d_1 * 1 + (1 - d_1) * 2 = 1.5946036; d_2 = 1 - 3^-0.75 = 0.5613087;
    # ema_3 = d_2 * 1.5946036 + (1 - d_2) * 4 = 2.6498301.
    assert averages_of([1.0, 2.0, 4.0]) == pytest.approx([1.0, 1.5946036, 2.6498301], abs=1e-6)


def test_without_warm_up_the_average_is_the_constant_decay_closed_form():
    # ema_k = d^(k-1) x_1 + sum_{j=2..k} (1 - d) d^(k-j) x_j with d = 0.5: 1, 1.5, 2.75, 4.375.
    values = [1.0, 2.0, 4.0, 6.0]
    assert averages_of(values, warmup=False, decay=0.5) == pytest.approx([1, 1.5, 2.75, 4.375])


def test_warm_up_power_one_is_the_plain_mean_of_every_step():
    # d_t = 1 - 1/(1 + t) = t/(t + 1): the running mean (crowsonkb's note in timm's docstring).
    values = torch.randn(20, generator=torch.Generator().manual_seed(0)).tolist()
    means = [sum(values[:k]) / k for k in range(1, 21)]
    assert averages_of(values, warmup_power=1.0) == pytest.approx(means, abs=1e-6)


def test_warm_up_reaches_the_decays_timms_docstring_quotes():
    # timm ModelEmaV3: power 3/4 reaches 0.999 at 10K steps and 0.9999 at 215.4K; power 2/3 at
    # 31.6K and 1M. The cap 0.9998 holds from 0.0002^(-4/3) - 1 = 85,498 steps on.
    three_quarters, two_thirds = EmaConfig(), EmaConfig(warmup_power=2 / 3)
    assert steps_to_reach(three_quarters, 0.999) == pytest.approx(9_999, rel=1e-6)
    assert steps_to_reach(three_quarters, 0.9999) == pytest.approx(215_442.5, rel=1e-6)
    assert steps_to_reach(two_thirds, 0.999) == pytest.approx(31_621.8, rel=1e-6)
    assert steps_to_reach(three_quarters, 0.9998) == pytest.approx(85_497.8, rel=1e-6)
    assert ema_decay(three_quarters, 10**6) == 0.9998 and ema_decay(three_quarters, 0) == 0
    # Without the warm-up, 570 digits steps leave 0.9998^569 = 89 % on the first step's weights.
    assert first_step_share(EmaConfig(warmup=False), 570) == pytest.approx(0.9998 ** 569)
    assert first_step_share(three_quarters, 570) < 1e-3


def test_a_run_shorter_than_the_window_without_warm_up_is_warned_about(caplog):
    caplog.set_level(logging.INFO, logger="regbench")
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    for warmup, warned in ((False, True), (True, False)):
        caplog.clear()
        ema_of(nn.Linear(1, 1), warmup=warmup).wrap_scheduler(optimizer, None, steps_per_epoch=570)
        assert ("the average will still be 89 % the first step's weights" in caplog.text) == warned
        assert "ema: 570 steps; the decay reaches" in caplog.text


def test_batchnorm_buffers_are_copied_from_the_trained_model_not_averaged():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ema_of(model, warmup=False, decay=0.5)
    for mean in (1.0, 3.0):
        model[1].running_mean.fill_(mean)
        model[0].weight.data.fill_(mean)
        ema.on_step_end(model)
    weights = ema.averaged_weights()
    assert weights["1.running_mean"].tolist() == [3.0, 3.0]  # copied
    assert weights["0.weight"].flatten().tolist() == [2.0] * 4  # averaged: 0.5 * 1 + 0.5 * 3


def test_the_average_resumes_exactly_from_a_weights_only_checkpoint():
    generator = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 2)
    ema = ema_of(model)
    for _ in range(5):
        model.weight.data.normal_(generator=generator)
        ema.on_step_end(model)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    resumed = ema_of(nn.Linear(3, 2))
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    model.weight.data.normal_(generator=generator)
    for regularizer in (ema, resumed):
        regularizer.on_step_end(model)
    assert resumed.updates == ema.updates == 6
    for key, value in ema.averaged_weights().items():
        assert torch.equal(value, resumed.averaged_weights()[key])


@pytest.mark.parametrize("key, value", [("decay", "1.0"), ("decay", "-0.1"),
                                        ("warmup_power", "0.0"), ("warmup_gamma", "-1.0")])
def test_bad_values_are_refused_in_one_line(key, value):
    cfg = compose_config(["regularizer=ema", f"regularizer.ema.{key}={value}"])
    one_line = rf"^regularizer\.ema\.{key}={re.escape(value)} is not allowed: [^\n]+$"
    with pytest.raises(ConfigError, match=one_line):
        OmegaConf.to_object(cfg)


def test_ema_and_swa_together_are_refused_in_one_line():
    from regbench.regularizers import build_regularizers
    from regbench.regularizers.swa import SwaConfig

    context = RunContext(dataset="digits", model="mlp", num_classes=10, epochs=3, optimizer="sgd")
    with pytest.raises(ConfigError, match=r"^regularizer=\['ema', 'swa'\] is not allowed: ema and "
                                          r"swa each keep a weight average[^\n]+$"):
        build_regularizers({"ema": EmaConfig(), "swa": SwaConfig()}, context)


@pytest.mark.slow
def test_the_average_lowers_test_nll_at_a_high_constant_learning_rate(tmp_path):
    # Measured (seeds 0-3, 5 epochs, lr 0.5 constant): test NLL 0.21/0.24/0.15/0.20 for the
    # average against 0.50/0.36/0.45/1.33 for the trained weights.
    metrics = train_in_process(tmp_path, [*SMALL, "regularizer=ema", "trainer.epochs=5", "seed=0",
                                          "optimizer.lr=0.5", "optimizer.schedule=none"])
    assert metrics["test/nll"] < 0.6 * metrics["test_raw/nll"]
    # 19 steps an epoch (1,257 training examples in batches of 64); the last update's decay
    # follows 94 earlier ones: 1 - 95^-0.75.
    assert metrics["ema/updates"] == 5 * 19
    assert metrics["ema/decay"] == pytest.approx(1 - 95 ** -0.75)
    for record in read_history(tmp_path):
        assert record["val/nll"] != record["val_raw/nll"]


@pytest.mark.slow
def test_evaluate_raw_false_records_only_the_average(tmp_path):
    metrics = train_in_process(tmp_path, [*SMALL, "regularizer=ema", "trainer.epochs=1",
                                          "regularizer.ema.evaluate_raw=false"])
    assert "test/nll" in metrics and not any(key.startswith("test_raw/") for key in metrics)
    assert not any(key.startswith("val_raw/") for key in read_history(tmp_path)[0])


@pytest.mark.slow
def test_a_run_interrupted_by_sigterm_resumes_to_the_uninterrupted_metrics(tmp_path, monkeypatch):
    # The default interval keeps epoch 2's state in memory (host_copy) and writes it at the signal.
    job = [*SMALL, "regularizer=ema", "trainer.epochs=4"]
    assert_resumes_exactly_after_sigterm(tmp_path, monkeypatch, job, epoch=3)


@pytest.mark.slow
def test_a_run_with_ema_and_label_smoothing_records_raw_and_averaged_metrics(tmp_path):
    metrics, history = train_end_to_end(tmp_path, ["regularizer=[ema,label_smoothing]", *SMALL])
    assert "test_raw/acc" in metrics and "val_raw/acc" in history[-1]
    assert metrics["ema/updates"] == 2 * 19
