"""Calibration pieces of the sweep report: the metric x calibrator table and the ranking flips.

A group is anything with ``.label`` (str) and ``.completed`` (its completed jobs); a job anything with
``.metrics`` (the run's metrics.json). Keys follow calibration_metrics: ``test/<metric>`` raw,
``test/<metric>@<calibrator>`` after a calibrator. Missing, non-numeric and non-finite values are
skipped; a metric or calibrator no job has is left out.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

from regbench.evaluation.calibrators import CALIBRATORS
from regbench.evaluation.panel import ECE_METRICS, METRICS, RAW, metric_key

CALIBRATOR_COLUMNS = (RAW, *CALIBRATORS)
SPEC = ".4f"


def values_of(jobs: Sequence[Any], key: str) -> list[float]:
    values = [(getattr(job, "metrics", None) or {}).get(key) for job in jobs]
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def completed_jobs(group: Any) -> list[Any]:
    return list(getattr(group, "completed", None) or [])


def mean_or_none(group: Any, key: str) -> float | None:
    values = values_of(completed_jobs(group), key)
    return statistics.fmean(values) if values else None


def cell(values: list[float], runs: int) -> str:
    """"m ± s" (sample std over seeds), "m" for one value, "–" for none, "(n=k)" when some lack it."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    text = f"{mean:{SPEC}}" if len(values) == 1 else f"{mean:{SPEC}} ± {statistics.stdev(values):{SPEC}}"
    return text if len(values) == runs else f"{text} (n={len(values)})"


def present(groups: Sequence[Any], key: str) -> bool:
    return any(values_of(completed_jobs(group), key) for group in groups)


def calibration_table_markdown(groups: Sequence[Any]) -> str:
    """One markdown table per metric (lower is better for all): a row per group, a column per
    calibrator (raw first), mean ± std over the group's completed seeds. "" when no job has any."""
    sections = []
    for metric in METRICS:
        columns = [name for name in CALIBRATOR_COLUMNS if present(groups, metric_key(metric, name))]
        if not columns:
            continue
        header = ["settings", "seeds", *columns]
        lines = [f"**test/{metric}** (lower is better; columns: after each calibrator fitted on the "
                 "validation split)", "",
                 "| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * len(columns)]
        for group in groups:
            done = completed_jobs(group)
            cells = [str(getattr(group, "label", "?")).replace("|", "\\|"), str(len(done))]
            cells += [cell(values_of(done, metric_key(metric, name)), len(done)) for name in columns]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def winners(groups: Sequence[Any], key: str) -> list[str]:
    """Labels of the groups with the lowest mean of ``key`` (several on an exact tie)."""
    means = {group.label: mean for group in groups if (mean := mean_or_none(group, key)) is not None}
    if not means:
        return []
    best = min(means.values())
    return [label for label, mean in means.items() if mean == best]


def ranking_flips(groups: Sequence[Any]) -> list[str]:
    """A line per ECE convention whose best group (lowest mean over seeds) differs from its
    reference's, e.g. "ranking flip: best by test/ece is label_smoothing, by test/ece_classwise is
    dropout". Compared: every ECE metric against ``ece`` under the same calibrator (raw and each
    calibrator), and every calibrator against raw under the same ECE metric. Each comparison uses
    only the groups that have both keys, and needs at least two of them."""
    lines = []

    def compare(reference: str, other: str) -> None:
        both = [group for group in groups
                if mean_or_none(group, reference) is not None and mean_or_none(group, other) is not None]
        if len(both) < 2:
            return
        first, second = winners(both, reference), winners(both, other)
        if set(first).isdisjoint(second):
            lines.append(f"ranking flip: best by {reference} is {' = '.join(first)}, "
                         f"by {other} is {' = '.join(second)}")

    for calibrator in CALIBRATOR_COLUMNS:
        for metric in ECE_METRICS[1:]:
            compare(metric_key(ECE_METRICS[0], calibrator), metric_key(metric, calibrator))
    for metric in ECE_METRICS:
        for calibrator in CALIBRATOR_COLUMNS[1:]:
            compare(metric_key(metric), metric_key(metric, calibrator))
    return lines
