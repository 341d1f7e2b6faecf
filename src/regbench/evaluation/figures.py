"""End-of-run figures: reliability diagram and confidence histogram (matplotlib, no pyplot state)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from regbench.evaluation.calibration_errors import (
    CALIBRATION_BINS,
    CONFIDENCE_HISTOGRAM_EDGES,
    reliability_bins,
    split_confidence,
    top_label,
)

# Okabe & Ito's colour-blind-safe palette: the two gap directions must never be confused.
OVERCONFIDENT_COLOR = "#D55E00"   # vermillion: confidence above accuracy
UNDERCONFIDENT_COLOR = "#0072B2"  # blue: accuracy above confidence
ACCURACY_COLOR = "#BBBBBB"        # neutral grey bars, so only the gaps carry colour
COUNT_COLOR = "#555555"
# Bins with fewer predictions than this are drawn faded: their accuracy is mostly noise.
FEW_PREDICTIONS = 10


@dataclass
class ReliabilityDrawing:
    """What a reliability diagram draws, per non-empty bin (tests read this, not pixels)."""

    centers: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    counts: np.ndarray
    gap_colors: list[str]  # OVERCONFIDENT_COLOR or UNDERCONFIDENT_COLOR per bin
    alphas: np.ndarray     # bar opacity: 1 for well-filled bins, fainter below FEW_PREDICTIONS


def reliability_drawing(confidence: np.ndarray, correct: np.ndarray,
                        bins: int = CALIBRATION_BINS) -> ReliabilityDrawing:
    return drawing_from_bins(*reliability_bins(confidence, correct, bins))


def drawing_from_bins(mean_confidence: np.ndarray, accuracy: np.ndarray,
                      counts: np.ndarray) -> ReliabilityDrawing:
    """The drawing of per-bin (mean confidence, accuracy, count), e.g. pooled over seeds."""
    mean_confidence, accuracy, counts = (np.asarray(v, dtype=float) for v in (mean_confidence, accuracy, counts))
    counts = counts.astype(int)
    bins = len(counts)
    edges = np.linspace(0, 1, bins + 1)
    filled = counts > 0
    acc, conf = accuracy[filled], mean_confidence[filled]
    colors = [OVERCONFIDENT_COLOR if c > a else UNDERCONFIDENT_COLOR for a, c in zip(acc, conf)]
    alphas = np.where(counts[filled] >= FEW_PREDICTIONS, 1.0, 0.35)
    return ReliabilityDrawing(((edges[:-1] + edges[1:]) / 2)[filled], acc, conf, counts[filled],
                              colors, alphas)


def draw_reliability(axes, counts_axes, drawing: ReliabilityDrawing, bins: int = CALIBRATION_BINS) -> None:
    """Grey accuracy bars; from each bar's top to the bin's mean confidence, the gap in the colour
    of its direction; below, the predictions per bin on a log axis (with their numbers), so a
    bin of 3 predictions is not read like one of 300."""
    width = 1 / bins
    d = drawing
    # One call per kind of bar, each bar's opacity in its colours (bar takes one alpha per call).
    axes.bar(d.centers, d.accuracy, width=width, color=[to_rgba(ACCURACY_COLOR, a) for a in d.alphas],
             edgecolor=[to_rgba("black", a) for a in d.alphas], linewidth=0.6)
    axes.bar(d.centers, d.confidence - d.accuracy, bottom=d.accuracy, width=width * 0.9, linewidth=0,
             color=[to_rgba(color, 0.85 * a) for color, a in zip(d.gap_colors, d.alphas)])
    axes.plot([0, 1], [0, 1], "--", color="black", linewidth=0.8)
    axes.set(xlim=(0, 1), ylim=(0, 1))
    axes.tick_params(labelbottom=False)
    counts_axes.bar(d.centers, d.counts, width=width, color=COUNT_COLOR, alpha=0.7)
    counts_axes.set_yscale("log")
    counts_axes.set_ylim(0.7, max(int(d.counts.max()) if len(d.counts) else 1, 1) * 12)
    for x, n in zip(d.centers, d.counts):
        counts_axes.text(x, n * 1.3, str(int(n)), ha="center", va="bottom", fontsize=6)
    counts_axes.set(xlim=(0, 1), xlabel="confidence (max softmax probability)")


def reliability_legend_handles() -> list:
    return [Patch(facecolor=ACCURACY_COLOR, edgecolor="black", label="accuracy in bin"),
            Patch(facecolor=OVERCONFIDENT_COLOR, label="over-confident gap (confidence > accuracy)"),
            Patch(facecolor=UNDERCONFIDENT_COLOR, label="under-confident gap (accuracy > confidence)"),
            Line2D([], [], linestyle="--", color="black", label="perfect calibration"),
            Patch(facecolor=ACCURACY_COLOR, alpha=0.35, edgecolor="black",
                  label=f"faded: fewer than {FEW_PREDICTIONS} predictions")]


def margins(figure: Figure, left: float, right: float, top: float, bottom: float) -> dict[str, float]:
    """Subplot margins given in inches, as the figure fractions a gridspec takes. A run's figures
    have fixed content, so fixed margins place them: constrained layout measures every text of the
    figure before drawing it, a cost every sweep job paid (scripts/bench_startup.py measures the
    figures' share of a job)."""
    width, height = figure.get_size_inches()
    return {"left": left / width, "right": 1 - right / width, "top": 1 - top / height,
            "bottom": bottom / height}


# Room, in inches, for what surrounds a diagram: tick labels and an axis label on the left, a title
# above, tick labels, an axis label and the figure legend below.
LEFT_MARGIN, RIGHT_MARGIN, TITLE_MARGIN, XLABEL_MARGIN = 0.75, 0.15, 0.35, 0.5
LEGEND_ROW = 0.19  # one row of the x-small legend
# Titles at a fixed height above the axes (nothing is drawn over the axes' top edge): matplotlib
# otherwise measures the tick labels under each title at every draw to place it.
TITLE_Y = 1.0
STRIP_GAP = 0.22   # between a diagram and its count strip (the strip's top tick label)
COLUMN_GAP = 0.45  # between diagrams side by side (the next strip's tick labels)


def reliability_axes(figure: Figure, columns: int, legend_rows: int):
    """A row of (diagram, count strip) pairs sharing x; the strip a quarter of the height; below,
    room for the axis label and ``legend_rows`` rows of legend."""
    width, height = figure.get_size_inches()
    bottom = XLABEL_MARGIN + 0.1 + LEGEND_ROW * legend_rows
    # Gaps in inches, as gridspec wants them: fractions of the mean axes width and height.
    column_width = (width - LEFT_MARGIN - RIGHT_MARGIN) / columns
    row_height = (height - TITLE_MARGIN - bottom - STRIP_GAP) / 2
    grid = figure.add_gridspec(2, columns, height_ratios=(4, 1), hspace=STRIP_GAP / row_height,
                               wspace=COLUMN_GAP / column_width,
                               **margins(figure, LEFT_MARGIN, RIGHT_MARGIN, TITLE_MARGIN, bottom))
    pairs = []
    for column in range(columns):
        main = figure.add_subplot(grid[0, column], sharey=pairs[0][0] if pairs else None)
        pairs.append((main, figure.add_subplot(grid[1, column], sharex=main)))
    return pairs


def ece_text(ece: float) -> str:
    """ECE as a fraction with 4 decimals, as in the logs, metrics.json and the report's tables."""
    return f"ECE {ece:.4f}"


def reliability_diagram(logits: torch.Tensor, labels: torch.Tensor, ece: float, title: str) -> Figure:
    """Accuracy per confidence bin against the diagonal; over- and under-confidence gaps in two
    colours; predictions per bin in a strip below; the legend under the axes."""
    confidence, correct = split_confidence(logits, labels)
    figure = Figure(figsize=(5.2, 6.2), dpi=100)
    handles = reliability_legend_handles()
    ((axes, counts_axes),) = reliability_axes(figure, 1, legend_rows=-(-len(handles) // 2))
    draw_reliability(axes, counts_axes, reliability_drawing(confidence, correct))
    axes.set_ylabel("accuracy")
    axes.set_title(f"{title}: {ece_text(ece)} ({CALIBRATION_BINS} bins, {len(confidence)} predictions)",
                   y=TITLE_Y)
    counts_axes.set_ylabel("predictions")
    figure.legend(handles=handles, loc="lower center", ncols=2, fontsize="x-small", frameon=False)
    return figure


@dataclass
class ConfidencePanels:
    """Histogram counts per confidence bin, for the correct and the incorrect predictions."""

    edges: np.ndarray
    correct: np.ndarray
    incorrect: np.ndarray


def confidence_panels(confidence: np.ndarray, correct: np.ndarray) -> ConfidencePanels:
    return ConfidencePanels(CONFIDENCE_HISTOGRAM_EDGES,
                            np.histogram(confidence[correct], bins=CONFIDENCE_HISTOGRAM_EDGES)[0],
                            np.histogram(confidence[~correct], bins=CONFIDENCE_HISTOGRAM_EDGES)[0])


CORRECT_COLOR = "#009E73"    # Okabe-Ito bluish green
INCORRECT_COLOR = "#D55E00"  # vermillion


def confidence_histogram(logits: torch.Tensor, labels: torch.Tensor, title: str) -> Figure:
    """How confident the model is on the examples it gets right and wrong: two panels, each with
    its own count axis, so a handful of mistakes is as visible as hundreds of right answers."""
    confidence, correct = split_confidence(logits, labels)
    panels = confidence_panels(confidence, correct)
    figure = Figure(figsize=(5.2, 4.4), dpi=100)
    # Above each panel its title, above the first the figure's title too.
    placement = margins(figure, LEFT_MARGIN, RIGHT_MARGIN, 1.7 * TITLE_MARGIN, XLABEL_MARGIN)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"hspace": 0.3, **placement})
    widths = np.diff(panels.edges)
    for axes, counts, color, name, mask in ((top, panels.correct, CORRECT_COLOR, "correct", correct),
                                            (bottom, panels.incorrect, INCORRECT_COLOR, "incorrect", ~correct)):
        axes.bar(panels.edges[:-1], counts, width=widths, align="edge", color=color)
        mean = f", mean confidence {confidence[mask].mean():.3f}" if mask.any() else ""
        axes.set_title(f"{name}: {int(mask.sum())} predictions{mean}", fontsize="small", loc="left",
                       y=TITLE_Y)
        axes.set_ylabel("predictions")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
    bottom.set(xlim=(0, 1), xlabel="confidence (max softmax probability)")
    figure.suptitle(f"{title}: mean confidence {confidence.mean():.3f}, accuracy {correct.mean():.3f}",
                    fontsize="medium", x=(placement["left"] + placement["right"]) / 2)  # over the axes
    return figure


def reliability_panel(probabilities_by_name: dict[str, torch.Tensor], labels: torch.Tensor,
                      eces: dict[str, float]) -> Figure:
    """One reliability diagram per entry of ``probabilities_by_name`` (test probabilities [N, K]; "raw"
    first, then the calibrators in the given order), side by side on a shared y axis, the entry's ECE
    (``eces[name]``, left out when missing) in its title; drawn as ``reliability_diagram``."""
    names = sorted(probabilities_by_name, key=lambda name: name != "raw")  # stable: raw first
    figure = Figure(figsize=(3.2 * max(len(names), 1), 4.6), dpi=100)
    handles = reliability_legend_handles()
    legend_columns = min(5, max(2, len(names)))
    pairs = reliability_axes(figure, max(len(names), 1), legend_rows=-(-len(handles) // legend_columns))
    labels = labels.detach().cpu()
    for (axes, counts_axes), name in zip(pairs, names):
        confidence, correct = top_label(probabilities_by_name[name].detach().float().cpu(), labels)
        drawing = reliability_drawing(confidence.numpy(), correct.numpy())
        draw_reliability(axes, counts_axes, drawing)
        axes.set_title(name if name not in eces else f"{name}: {ece_text(eces[name])}", fontsize="medium",
                       y=TITLE_Y)
        if axes is not pairs[0][0]:
            axes.tick_params(labelleft=False)
    pairs[0][0].set_ylabel("accuracy")
    pairs[0][1].set_ylabel("predictions")
    figure.legend(handles=handles, loc="lower center", ncols=legend_columns, fontsize="x-small",
                  frameon=False)
    return figure


def class_probability_heatmap(matrix: torch.Tensor, classes: list[str], title: str) -> Figure:
    """The [K, K] mean-probability matrix of confusion.class_probability_matrix as a heat-map, on a
    log colour scale: the diagonal is near 1 and the wrong-class mass, which is what this figure is
    for, is 1e-3..1e-1, invisible on a linear scale. Values are printed for up to 10 classes."""
    from matplotlib.colors import LogNorm

    values = matrix.detach().float().cpu().numpy()
    k = len(values)
    size = min(3.0 + 0.45 * k, 14.0)
    figure = Figure(figsize=(size + 1.2, size), dpi=100)
    axes = figure.subplots()
    floor = 1e-4  # probabilities below are drawn as the floor's colour
    image = axes.imshow(np.clip(values, floor, 1.0), norm=LogNorm(vmin=floor, vmax=1.0), cmap="viridis")
    figure.colorbar(image, ax=axes, label="mean predicted probability")
    if k <= 20:
        axes.set_xticks(range(k), classes, rotation=90 if max(map(len, classes)) > 2 else 0)
        axes.set_yticks(range(k), classes)
    if k <= 10:
        for (row, column), value in np.ndenumerate(values):
            if np.isfinite(value):
                axes.text(column, row, f"{value:.2f}" if value >= 0.01 else f"{value:.0e}",
                          ha="center", va="center", fontsize=7,
                          color="black" if value > 0.1 else "white")
    axes.set(xlabel="predicted class", ylabel="true class", title=title)
    figure.tight_layout()
    return figure
