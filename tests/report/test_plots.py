"""The plots' pooling of the seeds' calibration files, against a hand calculation."""

from __future__ import annotations

import math

import pytest

from regbench.report.plots import pool_reliability


def test_reliability_bins_pool_by_counts():
    edges = [0, 0.5, 1]
    first = {"bin_edges": edges, "bin_count": [2, 0], "bin_confidence": [0.4, None],
             "bin_accuracy": [0.5, None]}
    second = {"bin_edges": edges, "bin_count": [6, 4], "bin_confidence": [0.2, 0.9],
              "bin_accuracy": [0.0, 0.75]}
    confidence, accuracy, counts = pool_reliability([first, second])
    assert counts == [8, 4]
    # Bin 0: (2 * 0.4 + 6 * 0.2) / 8 = 0.25 mean confidence; (1 + 0) correct / 8 = 0.125 accuracy.
    assert confidence == pytest.approx([0.25, 0.9])
    assert accuracy == pytest.approx([0.125, 0.75])
    confidence, accuracy, counts = pool_reliability([first])
    assert counts == [2, 0] and math.isnan(confidence[1]) and math.isnan(accuracy[1])
