"""Early stopping: driven by a fake metric sequence it stops after `patience` epochs without
improvement and restores the best epoch's weights (buffers included); its state survives a
checkpoint round trip; on real data the test-time model is the best epoch's."""

from __future__ import annotations

import io
import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config, train_end_to_end, train_in_process
from regbench.config import ConfigError
from regbench.regularizers import REGULARIZERS, RunContext
from regbench.regularizers.early_stopping import EarlyStopping, EarlyStoppingConfig


def early_stopping(**config) -> EarlyStopping:
    return REGULARIZERS.get("early_stopping")(EarlyStoppingConfig(**config))


def small_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def mark(model: nn.Module, epoch: int) -> None:
    """Make the weights (and a BN buffer) tell which epoch they come from."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(epoch)
    model[1].running_mean.fill_(10 * epoch)


def drive(regularizer: EarlyStopping, model: nn.Module, values: list[float], key: str = "val/nll",
          first_epoch: int = 0) -> list[bool]:
    """Train-loop stand-in: epoch i leaves weights marked i + 1, then reports values[i]."""
    stops = []
    for offset, value in enumerate(values):
        epoch = first_epoch + offset
        mark(model, epoch + 1)
        stops.append(regularizer.on_epoch_end(epoch, {"val/nll": 1.0, "val/acc": 0.5, key: value},
                                              model))
        if stops[-1]:
            break
    return stops


def test_stops_after_patience_epochs_without_improvement_and_restores_the_best_weights():
    regularizer, model = early_stopping(patience=3), small_model()
    stops = drive(regularizer, model, [1.0, 0.8, 0.9, 0.8, 0.85, 0.1])
    # best at epoch 2 (0.8); epochs 3, 4 (0.8 is no improvement), 5 are bad: stop after epoch 5.
    assert stops == [False, False, False, False, True]
    metrics = regularizer.on_fit_end(model)
    assert metrics == {"early_stopping/best_epoch": 2, "early_stopping/stopped_epoch": 5}
    assert all(torch.all(p == 2) for p in model.parameters())
    assert torch.all(model[1].running_mean == 20)


def test_accuracy_is_maximized_and_min_delta_is_the_smallest_improvement():
    regularizer = early_stopping(patience=2, monitor="val/acc", min_delta=0.05)
    model = small_model()
    stops = drive(regularizer, model, [0.5, 0.6, 0.64, 0.62, 0.7], key="val/acc")
    # 0.64 improves on 0.6 by less than 0.05, 0.62 is worse; 0.7 comes too late.
    assert stops == [False, False, False, True]
    assert regularizer.on_fit_end(model)["early_stopping/best_epoch"] == 2
    assert all(torch.all(p == 2) for p in model.parameters())


def test_without_a_stop_the_last_epoch_is_reported_and_the_best_restored():
    regularizer, model = early_stopping(patience=5), small_model()
    assert not any(drive(regularizer, model, [0.9, 0.5, 0.7, float("nan")]))
    assert regularizer.on_fit_end(model) == {"early_stopping/best_epoch": 2,
                                             "early_stopping/stopped_epoch": 4}
    assert all(torch.all(p == 2) for p in model.parameters())


def test_state_survives_a_weights_only_checkpoint_round_trip():
    values = [1.0, 0.5, 0.7, 0.6, 0.8, 0.9]
    uninterrupted, model = early_stopping(patience=3), small_model()
    expected_stops = drive(uninterrupted, model, values)
    expected_metrics = uninterrupted.on_fit_end(model)

    first, model = early_stopping(patience=3), small_model()
    drive(first, model, values[:3])
    buffer = io.BytesIO()
    torch.save({"regularizers": {"early_stopping": first.state_dict()}}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["regularizers"]["early_stopping"]
    resumed, model = early_stopping(patience=3), small_model()
    resumed.load_state_dict(state)
    stops = drive(resumed, model, values[3:], first_epoch=3)
    assert [False] * 3 + stops == expected_stops
    assert resumed.on_fit_end(model) == expected_metrics == {"early_stopping/best_epoch": 2,
                                                             "early_stopping/stopped_epoch": 5}
    assert all(torch.all(p == 2) for p in model.parameters())


def test_runs_without_validation_split_are_refused():
    def context(val_size):
        return RunContext(dataset="digits", model="mlp", num_classes=10, epochs=1, optimizer="sgd", val_size=val_size)

    with pytest.raises(ConfigError, match=r"dataset\.val_size=0 .*early_stopping"):
        early_stopping().setup(context(0))
    early_stopping().setup(context(180))


def test_config_composes_and_bad_values_are_refused():
    cfg = compose_config(["regularizer=early_stopping", "regularizer.early_stopping.patience=3",
                          "regularizer.early_stopping.monitor=val/acc"])
    assert OmegaConf.to_object(cfg).regularizer["early_stopping"] == EarlyStoppingConfig(
        patience=3, monitor="val/acc")
    for key, value in [("monitor", "test/acc"), ("monitor", "val/ece"), ("patience", 0),
                       ("min_delta", -0.1)]:
        with pytest.raises(ConfigError, match=rf"regularizer\.early_stopping\.{key}='?{value}"):
            OmegaConf.to_object(compose_config(["regularizer=early_stopping",
                                                f"regularizer.early_stopping.{key}={value}"]))


@pytest.mark.slow
def test_real_run_stops_and_tests_the_best_epochs_weights(tmp_path):
    # min_delta far above any possible gain: epoch 1 is the best, epoch 2 exhausts patience=1.
    metrics = train_in_process(tmp_path / "run", [
        "regularizer=early_stopping", "regularizer.early_stopping.patience=1",
        "regularizer.early_stopping.min_delta=100", "trainer.epochs=5"])
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    assert metrics["status"] == "completed" and metrics["epochs"] == 2 and len(history) == 2
    assert metrics["early_stopping/best_epoch"] == 1
    assert metrics["early_stopping/stopped_epoch"] == 2
    # Validation is re-evaluated after the restore: it matches epoch 1's, not epoch 2's.
    assert metrics["val/nll"] == pytest.approx(history[0]["val/nll"], rel=1e-5)
    assert metrics["val/nll"] != pytest.approx(history[1]["val/nll"], rel=1e-5)


@pytest.mark.slow
def test_a_two_epoch_run_records_its_best_and_stopped_epochs(tmp_path):
    metrics, _ = train_end_to_end(tmp_path, ["regularizer=early_stopping"])
    assert 1 <= metrics["early_stopping/best_epoch"] <= metrics["early_stopping/stopped_epoch"] == 2
