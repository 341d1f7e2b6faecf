"""Corruption shift in the report (runs with ``evaluation.shift``): the corruption error of every
group relative to its baseline group, a table in summary.md and ``shift.csv``, and the accuracy
and ECE against severity figure. Nothing of it appears for a sweep whose runs recorded no
``shift/*`` keys.

- **mCE** (Hendrycks & Dietterich 2019, with regbench's baseline group instead of AlexNet):
  CE_c = sum_s err(group, c, s) / sum_s err(baseline, c, s), mCE = the mean of CE_c over the
  corruptions, with err = 1 - ``shift/<c>/s<k>/acc`` averaged over the completed seeds. Sums run
  over the severities both groups recorded; a corruption only one of them recorded is left out,
  and so is one on which the baseline made no error (CE_c undefined). The baseline group's own mCE
  is 100 %; below 100 % is fewer errors under corruption than the baseline.
- **Severity figure** (Ovadia et al. 2019, Fig. 2 style): ``shift/acc@s<k>`` and
  ``shift/ece@s<k>`` against severity k, severity 0 being the clean ``test/acc`` and ``test/ece``;
  per group the mean over seeds and a band of one standard deviation.

matplotlib is imported where the figure is drawn (``import regbench.report`` stays light).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from regbench.report.comparisons import find_baselines, group_matches
from regbench.report.groups import Group, Grouping, finite_values, format_mean_std, mean_std
from regbench.report.outputs import SHIFT_CSV, SHIFT_SEVERITY_PNG
from regbench.run.spec import (
    SHIFT_ACC,
    SHIFT_ECE,
    SHIFT_ECE_TEMPERATURE,
    SHIFT_NLL,
    TEST_ACC,
    TEST_ECE,
    corruption_key,
    severity_key,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# shift/<corruption>/s<k>/acc (spec.corruption_key); any integer k, so that a published set keyed
# by another level than 1-5 (MNIST-C's one level) counts too.
CORRUPTION_ACCURACY = re.compile(r"^shift/(?P<corruption>[^/@]+)/s(?P<severity>\d+)/acc$")
# shift/acc@s<k> (spec.severity_key); severity 0 of the figure is the clean test split.
SEVERITY_ACCURACY = re.compile(r"^shift/acc@s(?P<severity>\d+)$")
# The run means shown next to the mCE: metrics.json key, column header.
SHIFT_COLUMNS = (
    (SHIFT_ACC, "shift acc"),
    (SHIFT_NLL, "shift NLL"),
    (SHIFT_ECE, "shift ECE"),
    (SHIFT_ECE_TEMPERATURE, "shift ECE (TS)"),
    (severity_key("ece", 5), "ECE at s5"),
)

Errors = dict[str, dict[int, float]]  # corruption -> severity -> error rate


# --- the corruption error -------------------------------------------------------------------------

def corruption_errors(group: Group) -> Errors:
    """err(group, c, s) = 1 - the mean over completed seeds of shift/<c>/s<s>/acc."""
    recorded = sorted({(match["corruption"], int(match["severity"]))
                       for job in group.completed for key in job.metrics
                       if (match := CORRUPTION_ACCURACY.match(key))})
    errors: Errors = {}
    for corruption, severity in recorded:
        if accuracies := finite_values(group.completed, corruption_key(corruption, severity, "acc")):
            errors.setdefault(corruption, {})[severity] = 1 - statistics.fmean(accuracies)
    return errors


def relative_corruption_errors(errors: Errors, baseline: Errors) -> dict[str, float]:
    """CE_c per corruption both recorded, summed over the severities both recorded; NaN where the
    baseline made no error at all (the ratio is undefined)."""
    ratios = {}
    for corruption in sorted(errors.keys() & baseline.keys()):
        severities = errors[corruption].keys() & baseline[corruption].keys()
        if not severities:
            continue
        denominator = math.fsum(baseline[corruption][s] for s in severities)
        numerator = math.fsum(errors[corruption][s] for s in severities)
        ratios[corruption] = numerator / denominator if denominator > 0 else math.nan
    return ratios


def mean_corruption_error(ratios: dict[str, float]) -> float:
    """The mean of CE_c over the corruptions where it is defined; NaN for none."""
    defined = [ratio for ratio in ratios.values() if math.isfinite(ratio)]
    return statistics.fmean(defined) if defined else math.nan


@dataclass
class ShiftRow:
    """One group's corruption error against its baseline (None: no baseline to compare with)."""

    group: Group
    baseline: Optional[Group]
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def mce(self) -> float:
        return mean_corruption_error(self.ratios)


def shift_rows(grouping: Grouping, selectors: Sequence[tuple[str, str]]) -> list[ShiftRow]:
    """A row per group that recorded per-corruption accuracies; its baseline is the one the
    verdicts use (comparisons.find_baselines), a baseline group its own."""
    errors = {id(group): corruption_errors(group) for group in grouping.groups}
    baselines = {id(group): baseline for group, baseline in find_baselines(grouping, selectors)[0]}
    rows = []
    for group in grouping.groups:
        if not errors[id(group)]:
            continue
        baseline = group if group_matches(group, selectors) else baselines.get(id(group))
        ratios = ({} if baseline is None else
                  relative_corruption_errors(errors[id(group)], errors[id(baseline)]))
        rows.append(ShiftRow(group, baseline, ratios))
    return rows


# --- summary.md and shift.csv ---------------------------------------------------------------------

def percent(value: float) -> str:
    return f"{100 * value:.1f}" if math.isfinite(value) else "–"


def shift_section(grouping: Grouping, selectors: Sequence[tuple[str, str]]) -> list[str]:
    """The "Corruption shift" section of summary.md; [] when no run recorded shift/ keys."""
    rows = shift_rows(grouping, selectors)
    if not rows:
        return []
    header = ["settings", "baseline", "seeds", "corruptions", "mCE (%)",
              *(title for _, title in SHIFT_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        done = row.group.completed
        defined = sum(math.isfinite(ratio) for ratio in row.ratios.values())
        cells = [row.group.label, row.baseline.label if row.baseline else "–", str(len(done)),
                 str(defined), percent(row.mce),
                 *(format_mean_std(finite_values(done, key), ".4f", len(done)) for key, _ in SHIFT_COLUMNS)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    parts = ["## Corruption shift", SECTION_TEXT.format(csv=SHIFT_CSV), "\n".join(lines)]
    if severities(grouping.groups):
        parts.append(f"![accuracy and ECE against corruption severity]({SHIFT_SEVERITY_PNG})")
    return parts


SECTION_TEXT = (
    "mCE: Hendrycks & Dietterich 2019's mean corruption error with the group's baseline (the one "
    "its verdicts use) in place of AlexNet: CE_c = Σ_s err(group, c, s) / Σ_s err(baseline, c, s), "
    "err = 1 − accuracy on corruption c at severity s averaged over seeds, mCE = mean of CE_c "
    "over the corruptions both recorded (a corruption on which the baseline made no error is "
    "left out); the baseline is 100 %, lower is fewer errors under corruption. The other "
    "columns: mean ± std over seeds of each run's means over every corruption and severity (TS: "
    "after the temperature fitted on the clean validation split; s5: severity 5 only). Every "
    "corruption's CE in {csv}."
)


def shift_table(grouping: Grouping, selectors: Sequence[tuple[str, str]]
                ) -> Optional[tuple[list[str], list[dict[str, Any]]]]:
    """(header, rows) of shift.csv, a row per group: CE per corruption (``ce/<corruption>``) and
    the mCE as fractions, the run means over seeds; None when no run recorded shift/ keys."""
    rows = shift_rows(grouping, selectors)
    if not rows:
        return None
    corruptions = sorted({corruption for row in rows for corruption in row.ratios})
    header = ["settings", "baseline", "seeds", "mce", *(key for key, _ in SHIFT_COLUMNS),
              *(f"ce/{corruption}" for corruption in corruptions)]
    table = []
    for row in rows:
        done = row.group.completed
        cells: dict[str, Any] = {"settings": row.group.label, "seeds": len(done),
                                 "baseline": row.baseline.label if row.baseline else "",
                                 "mce": blank_nan(row.mce)}
        for key, _ in SHIFT_COLUMNS:
            values = finite_values(done, key)
            cells[key] = statistics.fmean(values) if values else ""
        cells.update({f"ce/{c}": blank_nan(row.ratios.get(c, math.nan)) for c in corruptions})
        table.append(cells)
    return header, table


def blank_nan(value: float) -> Any:
    return value if math.isfinite(value) else ""


# --- accuracy and ECE against severity ------------------------------------------------------------

def severities(groups: Sequence[Group]) -> list[int]:
    """The severities (1 and up) whose shift/acc@s<k> some completed run recorded."""
    found = {int(match["severity"]) for group in groups for job in group.completed
             for key in job.metrics if (match := SEVERITY_ACCURACY.match(key))}
    return sorted(level for level in found if level >= 1)


def severity_curve(group: Group, metric: str, clean_key: str, levels: Sequence[int]
                   ) -> tuple[list[int], list[float], list[float]]:
    """(severities, mean over seeds, standard deviation over seeds), severity 0 = ``clean_key``;
    severities no seed of the group recorded are left out."""
    xs, means, spreads = [], [], []
    for level in [0, *levels]:
        values = finite_values(group.completed, clean_key if level == 0 else severity_key(metric, level))
        if values:
            mean, spread = mean_std(values)
            xs.append(level)
            means.append(mean)
            spreads.append(spread)
    return xs, means, spreads


def severity_figure(groups: Sequence[Group]) -> Optional[Figure]:
    """Two panels, accuracy and ECE against severity; a line per group (mean over seeds) in a
    band of ± one standard deviation over seeds. None when no run recorded per-severity keys."""
    levels = severities(groups)
    if not levels:
        return None
    from matplotlib.figure import Figure

    from regbench.report.plots import group_styles, seeds_text, wrap

    figure = Figure(figsize=(11, 4.6), dpi=100, layout="constrained")
    panels = figure.subplots(1, 2)
    for axes, (metric, clean_key, title) in zip(panels, (("acc", TEST_ACC, "accuracy"),
                                                          ("ece", TEST_ECE, "ECE (fraction)"))):
        for group, style in zip(groups, group_styles(len(groups))):
            xs, means, spreads = severity_curve(group, metric, clean_key, levels)
            if not xs:
                continue
            axes.plot(xs, means, color=style["color"], marker=style["marker"], markersize=5,
                      markeredgecolor="black", markeredgewidth=0.5,
                      label=f"{wrap(group.label)} ({seeds_text(len(group.completed))})")
            axes.fill_between(xs, [m - s for m, s in zip(means, spreads)],
                              [m + s for m, s in zip(means, spreads)], color=style["color"], alpha=0.2)
        axes.set_xticks([0, *levels], ["clean", *map(str, levels)])
        axes.set(xlabel="corruption severity", ylabel=title, title=f"{title} under corruption")
        axes.grid(alpha=0.3)
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize="small", frameon=False)
    figure.suptitle("test split under corruption: mean over corruptions, mean ± std over seeds")
    return figure


def write_shift_plots(out: Path, groups: Sequence[Group]) -> dict[str, Figure]:
    """shift_severity.png where the runs recorded per-severity keys; returns it by file name."""
    from regbench.report.plots import save_figure

    figure = severity_figure(groups)
    if figure is None:
        return {}
    save_figure(figure, out / SHIFT_SEVERITY_PNG)
    return {SHIFT_SEVERITY_PNG: figure}
