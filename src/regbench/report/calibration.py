"""Calibration pieces of the sweep report: the metric x calibrator table and the ranking flips.

Keys follow evaluation/panel.py: ``test/<metric>`` raw, ``test/<metric>@<calibrator>`` after a
calibrator. Missing, non-numeric and non-finite values are skipped; a metric or calibrator no job
has is left out.
"""

from __future__ import annotations

import statistics
from typing import Sequence

from regbench.evaluation.calibrators import CALIBRATORS
from regbench.evaluation.panel import ECE_METRICS, METRICS, RAW, metric_key
from regbench.report.groups import Group, finite_values, format_mean_std
from regbench.run.spec import CALIBRATION_FILE

CALIBRATOR_COLUMNS = (RAW, *CALIBRATORS)
SPEC = ".4f"


def unusable_calibration_files(groups: Sequence[Group]) -> list[str]:
    """A line per completed run whose test_calibration.json is there but cannot be used (a
    truncated file), naming it and how many runs its group's calibration figures then pool."""
    lines = []
    for group in groups:
        done = group.completed
        problems = [(job, why) for job in done if (why := job.calibration[1])]
        pooled = sum(job.calibration[0] is not None for job in done)
        lines += [f"{job.folder / CALIBRATION_FILE} cannot be read ({why}): the reliability and "
                  f"confidence figures of {group.label} pool {pooled} of its {len(done)} runs"
                  for job, why in problems]
    return lines


def mean_or_none(group: Group, key: str) -> float | None:
    values = finite_values(group.completed, key)
    return statistics.fmean(values) if values else None


def present(groups: Sequence[Group], key: str) -> bool:
    return any(finite_values(group.completed, key) for group in groups)


def calibration_table_markdown(groups: Sequence[Group]) -> str:
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
            done = group.completed
            cells = [str(group.label).replace("|", "\\|"), str(len(done))]
            cells += [format_mean_std(finite_values(done, metric_key(metric, name)), SPEC, len(done))
                      for name in columns]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def winners(groups: Sequence[Group], key: str) -> list[str]:
    """Labels of the groups with the lowest mean of ``key`` (several on an exact tie)."""
    means = {group.label: mean for group in groups if (mean := mean_or_none(group, key)) is not None}
    if not means:
        return []
    best = min(means.values())
    return [label for label, mean in means.items() if mean == best]


def ranking_flips(groups: Sequence[Group]) -> list[str]:
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
