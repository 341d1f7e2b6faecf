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


def test_comparisons_are_coloured_better_or_worse_by_each_metrics_direction(tmp_path):
    # dropout against none over 4 seeds: higher accuracy (better), higher ECE (worse), lower NLL
    # (better), higher mean confidence (no better direction). The old figure coloured by sign:
    # a worse ECE had the colour of a better accuracy.
    from matplotlib.colors import to_hex
    from sweep_folders import fake_sweep

    from regbench.report.analysis import analyse
    from regbench.report.groups import group_jobs
    from regbench.report.jobs import load_sweeps
    from regbench.report.plots import OUTCOME_COLORS, forest_plot

    def metrics(seed: int, shift: float) -> dict:
        return {"test/acc": 0.90 + seed / 100 + shift, "test/ece": 0.02 + seed / 1000 + shift / 2,
                "test/nll": 0.30 + seed / 100 - shift, "test/mean_confidence": 0.9 + seed / 100 + shift}

    jitter = (0.001, -0.001, 0.0005, 0.0)  # the differences vary a little between seeds
    runs = [(reg, seed, metrics(seed, shift and shift + jitter[seed]))
            for reg, shift in (("none", 0), ("dropout", 0.02)) for seed in range(4)]
    jobs = load_sweeps([fake_sweep(tmp_path / "sweep", runs)])
    analysis = analyse(jobs, group_jobs(jobs))
    figure = forest_plot(analysis.comparisons)
    colours = {}
    for axes in figure.axes:
        title = axes.get_title()
        points = [line for line in axes.lines if line.get_marker() == "o"]
        if points:
            colours[title] = to_hex(points[0].get_color())
    assert colours == {
        "test accuracy (pp)\n(higher is better)": OUTCOME_COLORS["better"].lower(),
        "test NLL\n(lower is better)": OUTCOME_COLORS["better"].lower(),
        "test ECE\n(lower is better)": OUTCOME_COLORS["worse"].lower(),
        "mean confidence\n(no better direction)": OUTCOME_COLORS["different"].lower(),
    }
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend[:3] == ["better (in the panel's better direction)", "worse",
                          "different (no better direction)"]
