"""End-of-run figures: reliability diagram and confidence histogram (matplotlib, no pyplot state)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from regbench.metrics import CALIBRATION_BINS

# Confidence histograms use bins half as wide as the calibration bins.
CONFIDENCE_HISTOGRAM_EDGES = np.linspace(0, 1, 2 * CALIBRATION_BINS + 1)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS):
    """Per equal-width bin: (mean confidence, accuracy, count); [lo, hi) bins, 1.0 in the last one,
    as torchmetrics counts them."""
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct.astype(float), minlength=bins) / counts
    return mean_confidence, accuracy, counts


def split_confidence(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    confidence, prediction = logits.float().softmax(dim=1).max(dim=1)
    return confidence.cpu().numpy(), (prediction == labels).cpu().numpy()


def reliability_diagram(logits: torch.Tensor, labels: torch.Tensor, ece: float, title: str) -> Figure:
    """Accuracy per confidence bin against the diagonal; the red part of a bar is its gap."""
    confidence, correct = split_confidence(logits, labels)
    mean_confidence, accuracy, counts = reliability_bins(confidence, correct)
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1 / CALIBRATION_BINS
    filled = counts > 0
    figure = Figure(figsize=(4.5, 4.5), dpi=100)
    axes = figure.add_subplot()
    axes.bar(centers[filled], accuracy[filled], width=width, edgecolor="black", color="tab:blue",
             label="accuracy")
    axes.bar(centers[filled], (mean_confidence - accuracy)[filled], bottom=accuracy[filled], width=width,
             edgecolor="red", color="red", alpha=0.3, hatch="//", label="gap (confidence - accuracy)")
    axes.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max softmax probability)", ylabel="accuracy",
             title=f"{title}: ECE {100 * ece:.2f} % ({CALIBRATION_BINS} bins)")
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    return figure


def confidence_histogram(logits: torch.Tensor, labels: torch.Tensor, title: str) -> Figure:
    """How confident the model is on the examples it gets right and wrong."""
    confidence, correct = split_confidence(logits, labels)
    figure = Figure(figsize=(5, 3.5), dpi=100)
    axes = figure.add_subplot()
    axes.hist([confidence[correct], confidence[~correct]], bins=CONFIDENCE_HISTOGRAM_EDGES, stacked=True,
              color=["tab:green", "tab:red"], label=[f"correct ({correct.sum()})", f"incorrect ({(~correct).sum()})"])
    axes.set(xlim=(0, 1), xlabel="confidence (max softmax probability)", ylabel="examples",
             title=f"{title}: mean confidence {confidence.mean():.3f}, accuracy {correct.mean():.3f}")
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    return figure


def reliability_panel(probabilities_by_name: dict[str, torch.Tensor], labels: torch.Tensor,
                      eces: dict[str, float]) -> Figure:
    """One reliability diagram per entry of ``probabilities_by_name`` (test probabilities [N, K]; "raw"
    first, then the calibrators in the given order), side by side on a shared y axis, the entry's ECE
    (``eces[name]``, left out when missing) in its title."""
    names = sorted(probabilities_by_name, key=lambda name: name != "raw")  # stable: raw first
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1 / CALIBRATION_BINS
    figure = Figure(figsize=(3.2 * max(len(names), 1), 3.6), dpi=100)
    axes_row = figure.subplots(1, max(len(names), 1), sharey=True, squeeze=False)[0]
    labels_np = labels.detach().cpu().numpy()
    for axes, name in zip(axes_row, names):
        confidence, prediction = probabilities_by_name[name].detach().float().max(dim=1)
        confidence = confidence.cpu().numpy()
        mean_confidence, accuracy, counts = reliability_bins(confidence, prediction.cpu().numpy() == labels_np)
        filled = counts > 0
        axes.bar(centers[filled], accuracy[filled], width=width, edgecolor="black", color="tab:blue",
                 label="accuracy")
        axes.bar(centers[filled], (mean_confidence - accuracy)[filled], bottom=accuracy[filled],
                 width=width, edgecolor="red", color="red", alpha=0.3, hatch="//", label="gap")
        axes.plot([0, 1], [0, 1], "--", color="gray")
        title = name if name not in eces else f"{name}: ECE {100 * eces[name]:.2f} %"
        axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=title)
    axes_row[0].set_ylabel("accuracy")
    axes_row[0].legend(loc="upper left", fontsize="small")
    figure.tight_layout()
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
