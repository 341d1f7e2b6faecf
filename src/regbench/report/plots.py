"""Every figure of the report: accuracy against ECE, the pooled reliability diagrams and confidence
histograms per group, the forest plot of the comparisons and the critical-difference diagram of the
ranks. Groups are told apart by a colour-blind-safe colour and a marker, and numbered where their
labels would overlap."""

from __future__ import annotations

import math
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from regbench.evaluation.figures import (
    CORRECT_COLOR,
    INCORRECT_COLOR,
    draw_reliability,
    drawing_from_bins,
    reliability_legend_handles,
)
from regbench.files import atomic_write
from regbench.report.analysis import Analysis, analysis_figures
from regbench.report.comparisons import (
    METRIC_NAMES,
    PERCENT_METRICS,
    Comparison,
    better_direction,
    format_level,
    outcome,
)
from regbench.report.groups import Group, Grouping, finite_values, mean_std
from regbench.report.outputs import COMPARISONS_PNG, PLOT_FILES, RANKS_PNG
from regbench.report.ranks import Ranking
from regbench.report.statistics import (
    ALPHA,
    HIGHER,
    INDISTINGUISHABLE,
    LEVEL,
    LOWER,
    TOO_FEW_SEEDS,
    cliques,
)
from regbench.run.spec import (
    CALIBRATION_FILE,
    TEST_ACC,
    TEST_ECE,
    TEST_ECE_TEMPERATURE,
    TEST_MEAN_CONFIDENCE,
)

LABEL_WIDTH = 32  # characters per line of a group's label inside plots

MARKERS = "osD^vP*Xph<>"
# Okabe & Ito (2008), "Color universal design": distinguishable with every common colour-vision
# deficiency; beyond 8 groups the markers keep groups apart.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")


def group_styles(count: int) -> list[dict[str, Any]]:
    """A colour and a marker per group, colour-blind-safe; colour and marker cycle at different
    lengths (8 and 11), so no two of the first 88 groups look the same."""
    return [{"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[i % len(MARKERS)]}
            for i in range(count)]


def seeds_text(count: int) -> str:
    return f"{count} seed" if count == 1 else f"{count} seeds"


def wrap(label: str) -> str:
    return "\n".join(textwrap.wrap(label, LABEL_WIDTH)) or label


def empty_figure(message: str) -> Figure:
    figure = Figure(figsize=(5, 3), dpi=100)
    figure.text(0.5, 0.5, message, ha="center", va="center")
    return figure


# Where a point's number may go, in points from the point: nearest first, then farther out.
LABEL_OFFSETS = [(dx * r, dy * r) for r in (7, 14, 22, 32)
                 for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))]


LABEL_BOX = 12.0  # points: a two-digit bold 8 pt number and some air


def repel_offsets(points: Sequence[tuple[float, float]], box: float = 9.0) -> list[tuple[float, float]]:
    """A text offset (in points) per point, in display units, such that no two labels' boxes
    (``box`` points square) overlap each other or sit on another point: greedy, in the given
    order, the nearest free offset first (the last candidate when none is free). ``points`` are
    display positions in points."""
    placed: list[tuple[float, float]] = []
    offsets = []
    for x, y in points:
        def free(candidate: tuple[float, float]) -> bool:
            cx, cy = x + candidate[0], y + candidate[1]
            return (all(abs(cx - px) >= box or abs(cy - py) >= box for px, py in placed) and
                    all(abs(cx - px) >= box / 1.5 or abs(cy - py) >= box / 1.5 for px, py in points))
        chosen = next((c for c in LABEL_OFFSETS if free(c)), LABEL_OFFSETS[-1])
        placed.append((x + chosen[0], y + chosen[1]))
        offsets.append(chosen)
    return offsets


@dataclass
class ScatterPoint:
    number: int
    group: Group
    style: dict[str, Any]
    x: tuple[float, float]  # mean, std over seeds
    y: tuple[float, float]


def scatter_points(grouping: Grouping, x_key: str, y_key: str = TEST_ACC) -> list[ScatterPoint]:
    points = []
    for number, (group, style) in enumerate(zip(grouping.groups, group_styles(len(grouping.groups))), 1):
        xs, ys = finite_values(group.completed, x_key), finite_values(group.completed, y_key)
        if xs and ys:
            points.append(ScatterPoint(number, group, style, mean_std(xs), mean_std(ys)))
    return points


def draw_points(axes, points: Sequence[ScatterPoint]) -> None:
    """Error bars: one standard deviation over seeds."""
    for p in points:
        axes.errorbar(p.x[0], p.y[0], xerr=p.x[1], yerr=p.y[1], linestyle="none", capsize=3,
                      markersize=7, markeredgecolor="black", markeredgewidth=0.5, elinewidth=1,
                      **p.style)


def number_points(axes, points: Sequence[ScatterPoint]) -> list[tuple[float, float]]:
    """Each point's number, placed by ``repel_offsets``; call once every panel of the figure is
    drawn (shared axes and the layout must not move afterwards)."""
    axes.figure.draw_without_rendering()  # the display transform needs the final layout
    to_points = 72 / axes.figure.dpi
    display = [tuple(v * to_points for v in axes.transData.transform((p.x[0], p.y[0]))) for p in points]
    offsets = repel_offsets(display, box=LABEL_BOX)
    for p, offset in zip(points, offsets):
        label = axes.annotate(str(p.number), (p.x[0], p.y[0]), xytext=offset, textcoords="offset points",
                              fontsize=8, fontweight="bold", ha="center", va="center",
                              arrowprops={"arrowstyle": "-", "color": "gray", "linewidth": 0.5}
                              if abs(offset[0]) > 6 or abs(offset[1]) > 6 else None)
        label.set_in_layout(False)  # placed for this layout: it must not change it
    return offsets


def accuracy_vs_ece(grouping: Grouping) -> Figure:
    """Test accuracy against test ECE, raw and after temperature scaling (one panel each, same
    accuracy axis): a point per group at its mean, error bars one standard deviation over seeds.
    Points carry their group's number, placed so numbers never overlap; the legend beside the
    plot is the table of numbers and groups (long labels next to points would overlap)."""
    panels = [(key, title, scatter_points(grouping, key)) for key, title in
              ((TEST_ECE, "raw softmax"), (TEST_ECE_TEMPERATURE, "after temperature scaling"))]
    panels = [panel for panel in panels if panel[2]]
    if not panels:
        return empty_figure("no completed runs yet")
    legend_rows = max(len(points) for _, _, points in panels)
    figure = Figure(figsize=(4.6 * len(panels) + 3.8, max(4.8, 0.28 * legend_rows + 1.5)), dpi=100,
                    layout="constrained")
    grid = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for axes, (key, title, points) in zip(grid, panels):
        axes.grid(alpha=0.3)
        axes.set(xlabel=f"test ECE, {title} (fraction; lower is better)", title=title)
        axes.margins(0.12)
    for axes, (_, _, points) in zip(grid, panels):
        draw_points(axes, points)
    for axes, (_, _, points) in zip(grid, panels):
        number_points(axes, points)
    grid[0].set_ylabel("test accuracy")
    legend_points = max((points for _, _, points in panels), key=len)
    handles = [Line2D([], [], linestyle="none", markeredgecolor="black", markeredgewidth=0.5,
                      label=f"{p.number}: {wrap(p.group.label)} ({seeds_text(len(p.group.completed))})",
                      **p.style) for p in legend_points]
    figure.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False,
                  ncols=1 if len(handles) <= 24 else 2)
    figure.suptitle("accuracy vs calibration: mean ± std over seeds")
    return figure


def calibration_files(group: Group) -> list[dict[str, Any]]:
    """The completed runs' test_calibration.json files that can be used (calibration.py names
    the others in summary.md and on stderr; each figure says how many runs it pools)."""
    return [summary for job in group.completed if (summary := job.calibration[0]) is not None]


def pooled_text(pooled: int, runs: int) -> str:
    """"3 seeds", or "2 of 3 seeds pooled" when some runs' files are missing or unusable."""
    return seeds_text(runs) if pooled == runs else f"{pooled} of {seeds_text(runs)} pooled"


def pool_reliability(summaries: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float], list[int]]:
    """Per bin over seeds: (mean confidence, accuracy, count), each run weighted by its examples
    in the bin (pooling the seeds' predictions). Files with other bin edges than the first are
    skipped. Empty bins have NaN confidence and accuracy."""
    if not summaries:
        return [], [], []
    edges = summaries[0]["bin_edges"]
    bins = len(edges) - 1
    counts, confidence_sum, correct_sum = [0] * bins, [0.0] * bins, [0.0] * bins
    for summary in summaries:
        if summary["bin_edges"] != edges:
            continue
        for i, (count, confidence, accuracy) in enumerate(
                zip(summary["bin_count"], summary["bin_confidence"], summary["bin_accuracy"])):
            if count:
                counts[i] += count
                confidence_sum[i] += count * confidence
                correct_sum[i] += count * accuracy
    confidence = [s / c if c else math.nan for s, c in zip(confidence_sum, counts)]
    accuracy = [s / c if c else math.nan for s, c in zip(correct_sum, counts)]
    return confidence, accuracy, counts


def reliability(grouping: Grouping) -> Figure:
    """Small multiples, one reliability diagram per group (bins pooled over its seeds), drawn as
    every run's own diagram (figures.draw_reliability: gaps coloured by direction, sparse bins
    faded, predictions per bin in the strip below); each title names the fewest predictions in a
    non-empty bin, so a curve pulled by a bin of 1 is recognised as such."""
    panels = []
    for group in grouping.groups:
        summaries = calibration_files(group)
        confidence, accuracy, counts = pool_reliability(summaries)
        if any(counts):
            panels.append((group, len(summaries), drawing_from_bins(confidence, accuracy, counts)))
    if not panels:
        return empty_figure(f"no {CALIBRATION_FILE} from completed runs yet")
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.3 * columns, 3.9 * rows + 0.8), dpi=100, layout="constrained")
    cells = figure.add_gridspec(rows, columns)
    for index, (group, pooled_runs, drawing) in enumerate(panels):
        inner = cells[index // columns, index % columns].subgridspec(2, 1, height_ratios=(4, 1), hspace=0.05)
        axes = figure.add_subplot(inner[0])
        counts_axes = figure.add_subplot(inner[1], sharex=axes)
        draw_reliability(axes, counts_axes, drawing)
        done = group.completed
        eces = finite_values(done, TEST_ECE)
        ece = f", ECE {statistics.fmean(eces):.4f}" if eces else ""
        axes.set_title(f"{wrap(group.label)}\n{pooled_text(pooled_runs, len(done))}{ece}, min bin "
                       f"{int(drawing.counts.min())}", fontsize="small")
        if index % columns == 0:
            axes.set_ylabel("accuracy")
            counts_axes.set_ylabel("predictions", fontsize="small")
        else:
            axes.tick_params(labelleft=False)
        counts_axes.set_xlabel("confidence" if index // columns == rows - 1 else "")
    figure.legend(handles=reliability_legend_handles(), loc="outside lower center",
                  ncols=5 if columns >= 4 else columns, fontsize="small", frameon=False)
    figure.suptitle("test reliability per group, bins pooled over seeds (ECE: mean over seeds)")
    return figure


def pooled_histograms(summaries: Sequence[Mapping[str, Any]]) -> Optional[tuple[list, list, list]]:
    """(edges, correct counts, incorrect counts) summed over seeds with the same edges."""
    if not summaries:
        return None
    edges = summaries[0]["histogram_edges"]
    correct = [0] * (len(edges) - 1)
    incorrect = [0] * (len(edges) - 1)
    for summary in summaries:
        if summary["histogram_edges"] == edges:
            correct = [a + b for a, b in zip(correct, summary["histogram_correct"])]
            incorrect = [a + b for a, b in zip(incorrect, summary["histogram_incorrect"])]
    return edges, correct, incorrect


def confidence_histograms(grouping: Grouping) -> Figure:
    """Small multiples, one panel per group (overlays become unreadable with many groups): test
    predictions per confidence bin, correct and incorrect as two outlines on a log count axis,
    so a handful of mistakes next to hundreds of right answers is still visible."""
    panels = []
    for group in grouping.groups:
        summaries = calibration_files(group)
        if pooled := pooled_histograms(summaries):
            panels.append((group, len(summaries), pooled))
    if not panels:
        return empty_figure(f"no {CALIBRATION_FILE} from completed runs yet")
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * rows + 0.8), dpi=100, layout="constrained")
    grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for axes in grid.flat[len(panels):]:
        axes.set_visible(False)
    for axes, (group, pooled_runs, (edges, correct, incorrect)) in zip(grid.flat, panels):
        axes.stairs(correct, edges, color=CORRECT_COLOR, fill=True, alpha=0.35)
        axes.stairs(correct, edges, color=CORRECT_COLOR, linewidth=1.2, label="correct")
        axes.stairs(incorrect, edges, color=INCORRECT_COLOR, linewidth=1.6, label="incorrect")
        axes.set_yscale("log")
        done = group.completed
        confidence = finite_values(done, TEST_MEAN_CONFIDENCE)
        accuracy = finite_values(done, TEST_ACC)
        summary = (f", acc {statistics.fmean(accuracy):.3f}, mean conf {statistics.fmean(confidence):.3f}"
                   if confidence and accuracy else "")
        axes.set_title(f"{wrap(group.label)}\n{pooled_text(pooled_runs, len(done))}{summary}", fontsize="small")
        axes.set_xlim(0, 1)
    for axes in grid[-1]:
        axes.set_xlabel("confidence")
    for axes in grid[:, 0]:
        axes.set_ylabel("test predictions (log)")
    figure.legend(handles=[Line2D([], [], color=CORRECT_COLOR, label="correct"),
                           Line2D([], [], color=INCORRECT_COLOR, label="incorrect")],
                  loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    figure.suptitle("test confidence, pooled over seeds")
    return figure


# Outcomes of a comparison, coloured by what they mean for the metric (Okabe & Ito): better and
# worse by the metric's direction, "different" for a metric with none (mean confidence).
DIFFERENT = "different"
OUTCOME_COLORS = {"better": "#009E73", "worse": "#D55E00", DIFFERENT: "#0072B2",
                  INDISTINGUISHABLE: "tab:gray", TOO_FEW_SEEDS: "lightgray"}
OUTCOME_LABELS = {"better": "better (in the panel's better direction)",
                  "worse": "worse", DIFFERENT: "different (no better direction)",
                  INDISTINGUISHABLE: INDISTINGUISHABLE, TOO_FEW_SEEDS: TOO_FEW_SEEDS}


def outcome_color(metric: str, decided: str) -> str:
    """The colour of a verdict on ``metric``: better/worse by its direction, never by the sign."""
    if decided in (HIGHER, LOWER):
        return OUTCOME_COLORS[outcome(metric, decided) or DIFFERENT]
    return OUTCOME_COLORS.get(decided, OUTCOME_COLORS[INDISTINGUISHABLE])


def panel_title(metric: str) -> str:
    """"test NLL\n(lower is better)"; OOD names already say their direction."""
    name = METRIC_NAMES.get(metric, metric)
    unit = " (pp)" if metric in PERCENT_METRICS else ""
    if "is better" in name:
        return f"{name}{unit}"
    direction = better_direction(metric)
    better = f"{direction} is better" if direction else "no better direction"
    return f"{name}{unit}\n({better})"


NOISE_OFFSET = 0.28  # rows apart: the bootstrap interval sits just below its t-interval


def draw_comparison(axes, c: Comparison, y: float, scale: float) -> None:
    """The t-interval (thick, with the mean) and, just below, the interval with the test split's
    noise (thin), each in the colour of its own verdict."""
    mean = c.paired.mean_diff * scale
    if math.isnan(mean):
        return
    color = outcome_color(c.metric, c.verdict)
    if math.isnan(c.paired.ci_low):
        axes.plot(mean, y, "o", markerfacecolor="none", color=color)
    else:
        error = [[mean - c.paired.ci_low * scale], [c.paired.ci_high * scale - mean]]
        axes.errorbar(mean, y, xerr=error, fmt="o", capsize=3, color=color, linewidth=2)
    if c.noise is not None:
        low, high = c.noise.low * scale, c.noise.high * scale
        axes.plot([low, high], [y + NOISE_OFFSET] * 2, linewidth=1, marker="|", markersize=6,
                  color=outcome_color(c.metric, c.noise.verdict))



def forest_legend(figure: Figure, comparisons: Sequence[Comparison]) -> None:
    shown = {c.verdict if c.verdict not in (HIGHER, LOWER)
             else outcome(c.metric, c.verdict) or DIFFERENT for c in comparisons}
    handles = [Line2D([], [], marker="o", linestyle="none", color=color, label=OUTCOME_LABELS[name])
               for name, color in OUTCOME_COLORS.items() if name in shown]
    handles.append(Line2D([], [], marker="o", color="black", linewidth=2,
                          label="seed-paired t-interval"))
    if any(c.noise is not None for c in comparisons):
        handles.append(Line2D([], [], marker="|", color="black", linewidth=1,
                              label="seeds + test examples (bootstrap)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
                  frameon=False, fontsize="small")


def forest_plot(comparisons: Sequence[Comparison], baseline: str = "regularizer=none") -> Figure:
    """One panel per metric, titled with its better direction: each comparison's mean difference
    with its t-interval (Bonferroni level over the metric's comparisons), the interval with the test
    split's noise below it, the zero line marked, coloured better/worse by the metric's direction
    (a lower ECE is better, a lower accuracy worse). Rows (one per group: each has one baseline)
    are the same in every panel; the baseline is named in the title."""
    if not comparisons:
        return empty_figure("no comparisons (no baseline group, or one group only)")
    metrics = list(dict.fromkeys(c.metric for c in comparisons))
    rows = list(dict.fromkeys((c.group.label, c.baseline.label) for c in comparisons))
    columns = min(3, len(metrics))
    grid_rows = math.ceil(len(metrics) / columns)
    height = max(2.4, 0.4 * len(rows) + 1.2)
    figure = Figure(figsize=(4.2 * columns + 2.5, height * grid_rows + 1.0), dpi=100,
                    layout="constrained")
    grid = figure.subplots(grid_rows, columns, sharey=True, squeeze=False)
    for axes in grid.flat[len(metrics):]:
        axes.set_visible(False)
    position = {row: i for i, row in enumerate(rows)}
    for axes, metric in zip(grid.flat, metrics):
        scale = 100 if metric in PERCENT_METRICS else 1
        axes.axvline(0, color="black", linewidth=1)
        for c in (c for c in comparisons if c.metric == metric):
            draw_comparison(axes, c, position[(c.group.label, c.baseline.label)], scale)
        axes.set_title(panel_title(metric), fontsize="medium")
        axes.grid(axis="x", alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(5))
        axes.set_yticks(range(len(rows)), [wrap(group) for group, _ in rows], fontsize="small")
        axes.set_ylim(len(rows) - 0.5, -0.5)
    for axes in grid[-1]:
        axes.set_xlabel("group − baseline")
    forest_legend(figure, comparisons)
    levels = sorted({c.ci_level for c in comparisons if c.family})
    level = "/".join(format_level(one) for one in levels) or format_level(LEVEL)
    most = seeds_text(max(c.paired.n_pairs for c in comparisons))
    figure.suptitle(f"group − baseline ({baseline}, same other settings): mean over seed pairs, "
                    f"{level} intervals; {most} at most")
    return figure


def critical_difference_diagram(ranking: Optional[Ranking], reason: str = "") -> Figure:
    """Demšar 2006's diagram, drawn with matplotlib: the average-rank axis (1 = best, left),
    each method hanging from its rank, the CD as a scale bar, and thick bars joining methods whose
    average ranks differ by less than CD (not significantly different)."""
    if ranking is None:
        return empty_figure(textwrap.fill(reason or "no ranking", 60))
    test = ranking.test
    order = sorted(range(len(ranking.methods)), key=lambda i: test.average_ranks[i])
    ranks = [test.average_ranks[i] for i in order]
    names = [ranking.methods[i] for i in order]
    k = len(names)
    half = math.ceil(k / 2)
    bars = cliques(ranks, test.critical_difference) if math.isfinite(test.critical_difference) else []
    label_rows = max(half, k - half)
    figure = Figure(figsize=(9, 1.9 + 0.32 * label_rows + 0.15 * len(bars)), dpi=100)
    axes = figure.add_axes((0.22, 0.02, 0.56, 0.8))
    axes.set_axis_off()
    axes.set_xlim(0.8, k + 0.2)
    step = 0.6
    bottom = -(0.9 + 0.35 * len(bars) + step * label_rows)
    axes.set_ylim(bottom, 1.6)
    axes.hlines(0, 1, k, color="black")
    for tick in range(1, k + 1):
        axes.vlines(tick, 0, 0.15, color="black")
        axes.text(tick, 0.25, str(tick), ha="center", va="bottom", fontsize="small")
    cd = test.critical_difference
    if math.isfinite(cd):
        axes.hlines(1.2, 1, 1 + cd, color="black", linewidth=1.5)
        axes.vlines([1, 1 + cd], 1.1, 1.3, color="black")
        axes.text(1 + cd / 2, 1.35, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize="small")
    for number, (first, last) in enumerate(bars):
        y = -0.35 - 0.35 * number
        axes.hlines(y, ranks[first] - 0.03, ranks[last] + 0.03, color="black", linewidth=4)
    top = -0.55 - 0.35 * len(bars)
    for i, (rank, name) in enumerate(zip(ranks, names)):
        left = i < half
        row = i if left else k - 1 - i
        y = top - step * row
        edge = 0.8 if left else k + 0.2
        axes.plot([rank, rank, edge], [0, y, y], color="tab:blue", linewidth=1)
        axes.text(edge - 0.05 if left else edge + 0.05, y, f"{name} ({rank:.2f})",
                  ha="right" if left else "left", va="center", fontsize="small")
    direction = "higher" if ranking.higher_is_better else "lower"
    figure.suptitle(f"average rank on {ranking.metric} ({direction} is better) over {test.n_blocks} "
                    f"blocks; Nemenyi CD at α = {ALPHA}", fontsize="medium")
    return figure


def write_plots(sweep: Path, grouping: Grouping, analysis: Optional[Analysis] = None) -> dict[str, Figure]:
    """Every plot as a PNG in ``sweep``; returns them by file name (for the TensorBoard copy and
    the HTML report). comparisons.png and ranks.png only when they have something to show
    (analysis.analysis_figures): a skipped one is said in summary.md, not drawn."""
    analysis = analysis or Analysis()
    figures = {
        PLOT_FILES["accuracy_vs_ece"]: accuracy_vs_ece(grouping),
        PLOT_FILES["reliability"]: reliability(grouping),
        PLOT_FILES["confidence_hist"]: confidence_histograms(grouping),
    }
    drawn = analysis_figures(analysis)
    if "comparisons" in drawn:
        figures[COMPARISONS_PNG] = forest_plot(analysis.comparisons,
                                               " ".join(f"{k}={v}" for k, v in analysis.selectors))
    if "ranks" in drawn:
        figures[RANKS_PNG] = critical_difference_diagram(analysis.ranking)
    for name, figure in figures.items():
        save_figure(figure, sweep / name)
    return figures


def save_figure(figure: Figure, path: Path, **options: Any) -> None:
    """``path`` whole or not at all: an interrupted report leaves the previous figure."""
    atomic_write(path, lambda file: figure.savefig(file, format=path.suffix[1:], **options))
