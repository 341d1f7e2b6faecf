"""The calibration panel (evaluation/panel.py): every metric raw and after each calibrator, its figure,
and its effect on a real run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY, TINY_LABELS, train_in_process
from regbench.config import ConfigError
from regbench.evaluation.calibration_errors import expected_calibration_error
from regbench.evaluation.figures import reliability_panel
from regbench.evaluation.metrics import brier_score
from regbench.evaluation.panel import (
    DEFAULT_CALIBRATORS,
    METRICS,
    calibration_panel,
    negative_log_likelihood,
)
from regbench.report.calibration import calibration_table_markdown


def group(label: str, *metrics: dict) -> SimpleNamespace:
    return SimpleNamespace(label=label, completed=[SimpleNamespace(metrics=m) for m in metrics])


def test_nll_and_brier_by_hand():
    probabilities = torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    assert negative_log_likelihood(probabilities, labels) == pytest.approx(-(math.log(0.8) + math.log(0.4)) / 2)
    assert brier_score(probabilities, labels).item() == pytest.approx((0.08 + 0.72) / 2)
    # A zero probability for the true class is floored at 1e-12.
    assert negative_log_likelihood(TINY, TINY_LABELS) == pytest.approx((-math.log(1e-12) - math.log(0.62)
                                                                        - math.log(0.3)) / 4)


def test_panel_returns_every_key(splits):
    (val_z, val_y), (test_z, test_y) = splits
    metrics, probabilities = calibration_panel(val_z[:180], val_y[:180], test_z[:360], test_y[:360])
    expected = {f"test/{metric}" for metric in METRICS}
    expected |= {f"test/{metric}@{name}" for metric in METRICS for name in DEFAULT_CALIBRATORS}
    assert set(metrics) == expected | {"temperature"}
    assert all(math.isfinite(value) for value in metrics.values())
    assert list(probabilities) == ["raw", *DEFAULT_CALIBRATORS]
    assert DEFAULT_CALIBRATORS == ("temperature", "platt", "vector", "isotonic")
    assert metrics["test/ece"] == pytest.approx(expected_calibration_error(test_z[:360].softmax(1), test_y[:360]))


def test_panel_refuses_matrix_scaling_on_a_small_validation_split(splits):
    (val_z, val_y), (test_z, test_y) = splits
    with pytest.raises(ConfigError, match="matrix scaling refused"):
        calibration_panel(val_z[:100], val_y[:100], test_z, test_y, calibrators=("matrix",))


def test_reliability_panel_one_diagram_per_calibrator_raw_first(splits):
    (val_z, val_y), (test_z, test_y) = splits
    metrics, probabilities = calibration_panel(val_z, val_y, test_z, test_y, calibrators=("vector", "temperature"))
    reordered = {"vector": probabilities["vector"], "raw": probabilities["raw"],
                 "temperature": probabilities["temperature"]}
    eces = {"raw": metrics["test/ece"], "vector": metrics["test/ece@vector"]}
    figure = reliability_panel(reordered, test_y, eces)
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]  # count strips: none
    assert titles == [f"raw: ECE {eces['raw']:.4f}", f"vector: ECE {eces['vector']:.4f}", "temperature"]


@pytest.mark.slow
def test_every_calibrator_lowers_label_smoothings_raw_ece_on_a_real_digits_run(tmp_path):
    run_dir = tmp_path / "run"
    # Label smoothing leaves this MLP under-confident on digits (mean confidence ~0.85, ECE ~0.13).
    metrics = train_in_process(run_dir, ["regularizer=label_smoothing", "trainer.epochs=15",
                                         "evaluation.figures=true"])
    assert metrics["test/ece"] > 0.08
    for calibrator in DEFAULT_CALIBRATORS:
        assert metrics[f"test/ece@{calibrator}"] < metrics["test/ece"], calibrator
        for metric in METRICS:
            assert math.isfinite(metrics[f"test/{metric}@{calibrator}"])
    assert (run_dir / "test_reliability_panel.png").stat().st_size > 0
    group = SimpleNamespace(label="label_smoothing", completed=[SimpleNamespace(metrics=metrics)])
    table = calibration_table_markdown([group])
    assert "label_smoothing" in table and "isotonic" in table
