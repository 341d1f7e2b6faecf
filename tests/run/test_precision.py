"""The precision a run trains in: machine.autocast_dtype's choice for trainer.amp on the CPU (both
branches of cpu_has_bf16, so the tests hold on CPUs with and without native bf16; the default is
bf16 only for the models with evidence) and the ``precision`` metrics.json records from the run's
actual autocast dtype."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import train_in_process
from regbench import machine
from regbench.machine import CPU_BF16_DEFAULT_MODELS, PRECISION_KEY, autocast_dtype, precision_name

CPU = torch.device("cpu")


def test_precision_names_are_the_autocast_dtypes_short_names():
    assert [precision_name(dtype) for dtype in (None, torch.bfloat16, torch.float16)] == [
        "fp32", "bf16", "fp16"]


@pytest.mark.parametrize("native_bf16", [True, False])
def test_amp_false_trains_in_fp32_on_every_cpu(monkeypatch, native_bf16):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: native_bf16)
    assert autocast_dtype(CPU, False, "mlp") is None


def test_amp_true_is_bf16_for_any_model_on_a_cpu_that_computes_it(monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
    assert autocast_dtype(CPU, True, "resnet34") == torch.bfloat16


def test_amp_true_on_a_cpu_without_bf16_warns_and_trains_in_fp32(monkeypatch, caplog):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="regbench.machine"):
        assert autocast_dtype(CPU, True, "mlp") is None
    assert "no native bf16" in caplog.text


def test_the_default_is_bf16_for_the_four_models_of_the_evidence_sweep_on_a_bf16_cpu(monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
    assert CPU_BF16_DEFAULT_MODELS == {"mlp", "lenet", "convnet", "resnet"}
    assert all(autocast_dtype(CPU, None, model) == torch.bfloat16 for model in CPU_BF16_DEFAULT_MODELS)


def test_the_default_keeps_the_torchvision_resnets_in_fp32_even_on_a_bf16_cpu(monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
    assert [autocast_dtype(CPU, None, model) for model in ("resnet18", "resnet34", "resnet50")] == [
        None, None, None]


def test_the_default_is_fp32_without_a_warning_on_a_cpu_without_bf16(monkeypatch, caplog):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="regbench.machine"):
        assert autocast_dtype(CPU, None, "mlp") is None
    assert not caplog.text


def test_metrics_json_records_fp32_when_amp_is_off(tmp_path):
    metrics = train_in_process(tmp_path / "run", ["trainer.amp=false", "trainer.epochs=1"])
    assert metrics["status"] == "completed" and metrics[PRECISION_KEY] == "fp32"


def test_metrics_json_records_fp32_when_amp_asks_for_bf16_on_a_cpu_without_it(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    metrics = train_in_process(tmp_path / "run", ["trainer.amp=true", "trainer.epochs=1"])
    assert metrics[PRECISION_KEY] == "fp32"


@pytest.mark.parametrize("native_bf16,precision", [(True, "bf16"), (False, "fp32")])
def test_metrics_json_records_the_default_runs_precision(tmp_path, monkeypatch, native_bf16, precision):
    # Pretending on a CPU without native bf16 is fine: autocast emulates it there, only slower.
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: native_bf16)
    metrics = train_in_process(tmp_path / "run", ["trainer.epochs=1"])
    assert metrics["status"] == "completed" and metrics[PRECISION_KEY] == precision
