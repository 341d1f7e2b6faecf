"""The end-of-run figures, tested on what they draw (bins, counts, colours), not on pixels."""

import numpy as np
import torch
from matplotlib.colors import to_hex

from regbench.evaluation.figures import (
    ACCURACY_COLOR,
    FEW_PREDICTIONS,
    OVERCONFIDENT_COLOR,
    UNDERCONFIDENT_COLOR,
    confidence_histogram,
    confidence_panels,
    reliability_diagram,
    reliability_drawing,
    reliability_panel,
)


def logits_with_confidence(confidences: list[float], classes: int = 2) -> torch.Tensor:
    """Two-class logits whose softmax puts ``c`` on class 0."""
    c = torch.tensor(confidences)
    return torch.stack([c.log(), (1 - c).log()], dim=1)


def test_gap_colours_follow_the_direction_of_miscalibration():
    # Bin [0.8, 0.867): 20 predictions at 0.82, 10 right (over-confident by 0.32);
    # bin [0.533, 0.6): 20 predictions at 0.55, all right (under-confident by 0.45);
    # bin [0.933, 1]: 3 predictions at 0.95, all right (under-confident, few).
    confidence = np.array([0.82] * 20 + [0.55] * 20 + [0.95] * 3)
    correct = np.array([True] * 10 + [False] * 10 + [True] * 20 + [True] * 3)
    drawing = reliability_drawing(confidence, correct)
    assert drawing.counts.tolist() == [20, 20, 3]
    np.testing.assert_allclose(drawing.accuracy, [1.0, 0.5, 1.0])
    np.testing.assert_allclose(drawing.confidence, [0.55, 0.82, 0.95])
    assert drawing.gap_colors == [UNDERCONFIDENT_COLOR, OVERCONFIDENT_COLOR, UNDERCONFIDENT_COLOR]
    assert drawing.alphas.tolist() == [1.0, 1.0, 0.35]  # the 3-prediction bin is faded
    assert 3 < FEW_PREDICTIONS <= 20


def test_diagram_draws_those_bars_counts_and_a_legend_outside_the_axes():
    confidence = [0.82] * 20 + [0.55] * 20
    labels = torch.tensor([0] * 10 + [1] * 10 + [0] * 20)
    figure = reliability_diagram(logits_with_confidence(confidence), labels, ece=0.3864, title="test")
    axes, counts_axes = figure.axes
    assert axes.get_title() == "test: ECE 0.3864 (15 bins, 40 predictions)"
    bars = [(round(p.get_x() + p.get_width() / 2, 4), round(p.get_y(), 4), round(p.get_height(), 4),
             to_hex(p.get_facecolor())) for p in axes.patches]
    # Per bin the grey accuracy bar from 0, then per bin the gap from the accuracy to the mean confidence.
    assert bars == [
        (0.5667, 0.0, 1.0, ACCURACY_COLOR.lower()), (0.8333, 0.0, 0.5, ACCURACY_COLOR.lower()),
        (0.5667, 1.0, -0.45, UNDERCONFIDENT_COLOR.lower()), (0.8333, 0.5, 0.32, OVERCONFIDENT_COLOR.lower()),
    ]
    assert [round(p.get_height()) for p in counts_axes.patches] == [20, 20]
    assert counts_axes.get_yscale() == "log"
    assert [t.get_text() for t in counts_axes.texts] == ["20", "20"]
    legend = figure.legends[0]  # a figure legend: it covers no bar
    names = [t.get_text() for t in legend.get_texts()]
    assert any("over-confident" in n for n in names) and any("under-confident" in n for n in names)
    assert not axes.get_legend()


def test_diagram_fades_the_bars_of_bins_with_few_predictions():
    confidence = [0.82] * 20 + [0.95] * 3
    labels = torch.tensor([0] * 23)
    axes = reliability_diagram(logits_with_confidence(confidence), labels, ece=0.1, title="test").axes[0]
    accuracy_bars, gap_bars = axes.patches[:2], axes.patches[2:]
    assert [p.get_facecolor()[3] for p in accuracy_bars] == [1.0, 0.35]
    assert [p.get_edgecolor()[3] for p in accuracy_bars] == [1.0, 0.35]
    assert [round(p.get_facecolor()[3], 4) for p in gap_bars] == [0.85, round(0.85 * 0.35, 4)]


def test_confidence_histogram_puts_a_few_mistakes_on_their_own_axis():
    confidence = [0.99] * 300 + [0.6, 0.7, 0.97]
    labels = torch.tensor([0] * 300 + [1] * 3)
    panels = confidence_panels(np.array(confidence), labels.numpy() == 0)
    assert panels.correct.sum() == 300 and panels.incorrect.sum() == 3
    assert panels.incorrect[18] == 1 and panels.incorrect[21] == 1 and panels.incorrect[29] == 1
    figure = confidence_histogram(logits_with_confidence(confidence), labels, title="test")
    top, bottom = figure.axes
    assert top.get_title(loc="left").startswith("correct: 300 predictions")
    assert bottom.get_title(loc="left").startswith("incorrect: 3 predictions")
    assert max(p.get_height() for p in bottom.patches) == 1
    assert bottom.get_ylim()[1] < 2  # its own scale: the 3 mistakes fill the panel


def test_panel_draws_each_calibrator_like_the_single_diagram():
    probabilities = logits_with_confidence([0.82] * 20 + [0.55] * 20).softmax(dim=1)
    labels = torch.tensor([0] * 10 + [1] * 10 + [0] * 20)
    figure = reliability_panel({"temperature": probabilities, "raw": probabilities}, labels,
                               {"raw": 0.3864})
    single = reliability_diagram(probabilities.log(), labels, 0.3864, "x")
    assert len(figure.axes) == 4  # (diagram, count strip) per calibrator
    colours = lambda axes: [to_hex(p.get_facecolor()) for p in axes.patches]
    assert colours(figure.axes[0]) == colours(figure.axes[2]) == colours(single.axes[0])
    assert figure.axes[0].get_title() == "raw: ECE 0.3864"


FIGURE_FILES = ("test_reliability.png", "test_confidence_hist.png", "test_reliability_panel.png",
                "test_class_probabilities.png")


def test_figures_off_skips_the_figures_and_changes_no_number(tmp_path):
    """evaluation.figures=false: no PNGs, TensorBoard images or projector files; every metric the
    same as with figures (same seed), and test_calibration.json, the report's source, still there."""
    from conftest import train_in_process

    drawn = train_in_process(tmp_path / "on", ["evaluation.figures=true"])
    skipped = train_in_process(tmp_path / "off", ["evaluation.figures=false"])
    timings = {"seconds"}
    assert {k: v for k, v in skipped.items() if k not in timings} == \
        {k: v for k, v in drawn.items() if k not in timings}
    for name in FIGURE_FILES:
        assert (tmp_path / "on" / name).stat().st_size > 0
        assert not (tmp_path / "off" / name).exists()
    assert not (tmp_path / "off" / "projector_config.pbtxt").exists()
    assert (tmp_path / "off" / "test_calibration.json").stat().st_size > 0

