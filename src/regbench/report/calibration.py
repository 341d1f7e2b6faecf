"""Calibration pieces of the sweep report: the metric x calibrator table (a calibrator that made
test NLL worse than raw marked) and the ranking flips beyond the noise.

Keys follow evaluation/panel.py: ``test/<metric>`` raw, ``test/<metric>@<calibrator>`` after a
calibrator. Missing, non-numeric and non-finite values are skipped; a metric or calibrator no job
has is left out.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from regbench.evaluation.calibrators import CALIBRATORS
from regbench.evaluation.panel import ECE_METRICS, METRICS, RAW, metric_key
from regbench.report.groups import Group, finite_values, format_mean_std, metric_value
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


def worse_than_raw(group: Group, calibrator: str) -> tuple[int, int]:
    """(runs whose test NLL after ``calibrator`` is above their raw test NLL, runs with both)."""
    pairs = [(metric_value(job, metric_key("nll", calibrator)),
              metric_value(job, metric_key("nll"))) for job in group.completed]
    pairs = [(after, raw) for after, raw in pairs if after is not None and raw is not None]
    return sum(after > raw for after, raw in pairs), len(pairs)


# The debiased L2 ECE clamps a negative estimate of the squared error at 0 (calibration_errors.py);
# every run at 0 is shown as CLAMPED, not as "0.0000 ± 0.0000", and explained under its table.
CLAMPED_METRIC = "ece_debiased_l2"
CLAMPED = "clamped 0"
CLAMPED_NOTE = ("clamped 0: 0 in every run. The debiased estimator (Kumar et al. 2019) "
                "subtracts each bin's sampling variance from its squared gap and clamps a negative "
                "total at 0: the test split's 15 equal-mass bins cannot tell these runs' "
                "calibration error from binning noise. It is not an exact 0.")


def values_text(values: Sequence[float], key: str, runs: int) -> str:
    """mean ± std over seeds (groups.format_mean_std), or CLAMPED when a clamped metric is 0 in
    every run."""
    if CLAMPED_METRIC in key and values and all(value == 0 for value in values):
        return CLAMPED if len(values) == runs else f"{CLAMPED} (n={len(values)})"
    return format_mean_std(values, SPEC, runs)


def calibration_cell(group: Group, metric: str, calibrator: str) -> str:
    """mean ± std over seeds, and for NLL after a calibrator "⚠ k/n" when it made k of n runs'
    test NLL worse than raw (calibrators.worse_than_raw warns in each such run's log)."""
    done = group.completed
    key = metric_key(metric, calibrator)
    cell = values_text(finite_values(done, key), key, len(done))
    if metric == "nll" and calibrator != RAW:
        worse, runs = worse_than_raw(group, calibrator)
        if worse:
            cell += f" ⚠ {worse}/{runs}"
    return cell


WORSE_NLL_NOTE = ("⚠ k/n: in k of the group's n runs this calibrator's test NLL is worse than the "
                  "raw softmax's: it hurts the probabilities it should improve (a flexible "
                  "calibrator such as isotonic regression overfits a small validation split); each "
                  "such run's log says so (evaluation/calibrators.py).")


def calibration_table_markdown(groups: Sequence[Group]) -> str:
    """One markdown table per metric (lower is better for all): a row per group, a column per
    calibrator (raw first), mean ± std over the group's completed seeds, NLL made worse than raw
    marked. "" when no job has any."""
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
            cells = [str(group.label).replace("|", "\\|"), str(len(group.completed))]
            cells += [calibration_cell(group, metric, name) for name in columns]
            lines.append("| " + " | ".join(cells) + " |")
        if metric == "nll" and "⚠" in "\n".join(lines[4:]):
            lines += ["", WORSE_NLL_NOTE]
        if CLAMPED in "\n".join(lines[4:]):
            lines += ["", CLAMPED_NOTE]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def winners(groups: Sequence[Group], key: str) -> list[str]:
    """Labels of the groups with the lowest mean of ``key`` (several on an exact tie)."""
    means = {group.label: mean for group in groups if (mean := mean_or_none(group, key)) is not None}
    if not means:
        return []
    best = min(means.values())
    return [label for label, mean in means.items() if mean == best]


# A flip is beyond the noise when, in both metrics, the two groups' means differ by more than this
# many standard errors of their difference: about a two-sided 5 % test (z = 1.96).
FLIP_STANDARD_ERRORS = 2.0
FLIP_RULE = (f"A ranking flip is listed only when both orderings are beyond the noise: in each of "
             f"the two metrics the two groups' means over seeds differ by more than "
             f"{FLIP_STANDARD_ERRORS:g} standard errors of their difference, "
             f"{FLIP_STANDARD_ERRORS:g}·sqrt(s₁²/n₁ + s₂²/n₂) (about a two-sided 5 % test); a "
             "group with one seed has no standard error, so its flips are not listed.")


@dataclass
class Flip:
    """Two ECE conventions (or calibrators) that pick different best groups."""

    reference: str
    other: str
    first: Group   # best by reference
    second: Group  # best by other

    @property
    def beyond_noise(self) -> bool:
        return (clear_difference(self.first, self.second, self.reference)
                and clear_difference(self.second, self.first, self.other))

    def line(self) -> str:
        return (f"ranking flip: best by {self.reference} is {self.first.label} "
                f"({mean_text(self.first, self.reference)} vs "
                f"{mean_text(self.second, self.reference)} for {self.second.label}), by "
                f"{self.other} is {self.second.label} ({mean_text(self.second, self.other)} vs "
                f"{mean_text(self.first, self.other)} for {self.first.label})")


def mean_text(group: Group, key: str) -> str:
    values = finite_values(group.completed, key)
    return values_text(values, key, len(values))


def clear_difference(better: Group, worse: Group, key: str) -> bool:
    """Whether ``better``'s mean of ``key`` is below ``worse``'s by more than FLIP_STANDARD_ERRORS
    standard errors of the difference of the two means (each group needs 2 seeds)."""
    xs, ys = finite_values(better.completed, key), finite_values(worse.completed, key)
    if len(xs) < 2 or len(ys) < 2:
        return False
    error = math.sqrt(statistics.variance(xs) / len(xs) + statistics.variance(ys) / len(ys))
    return statistics.fmean(ys) - statistics.fmean(xs) > FLIP_STANDARD_ERRORS * error


def flip_candidates(groups: Sequence[Group]) -> list[Flip]:
    """Every pair of keys whose best groups (lowest mean over seeds) differ. Compared: every ECE
    metric against ``ece`` under the same calibrator (raw and each calibrator), and every calibrator
    against raw under the same ECE metric. Each comparison uses only the groups that have both
    keys, and needs at least two of them; on an exact tie the first of the tied groups."""
    found = []

    def compare(reference: str, other: str) -> None:
        both = [group for group in groups
                if mean_or_none(group, reference) is not None and mean_or_none(group, other) is not None]
        if len(both) < 2:
            return
        first, second = winners(both, reference), winners(both, other)
        if set(first).isdisjoint(second):
            by_label = {group.label: group for group in both}
            found.append(Flip(reference, other, by_label[first[0]], by_label[second[0]]))

    for calibrator in CALIBRATOR_COLUMNS:
        for metric in ECE_METRICS[1:]:
            compare(metric_key(ECE_METRICS[0], calibrator), metric_key(metric, calibrator))
    for metric in ECE_METRICS:
        for calibrator in CALIBRATOR_COLUMNS[1:]:
            compare(metric_key(metric), metric_key(metric, calibrator))
    return found


def ranking_flips(groups: Sequence[Group]) -> list[str]:
    """A line per ranking flip beyond the noise (FLIP_RULE), e.g. "ranking flip: best by test/ece
    is label_smoothing (0.0210 ± 0.0010 vs 0.0290 ± 0.0012 for dropout), by test/ece_classwise
    is dropout (...)"."""
    return [flip.line() for flip in flip_candidates(groups) if flip.beyond_noise]


def flip_text(groups: Sequence[Group]) -> str:
    """summary.md's paragraph on the ranking flips: the rule, the flips beyond the noise, and how
    many orderings differ only within it."""
    candidates = flip_candidates(groups)
    if not candidates:
        return ("No ranking flips: every ECE convention and calibrator picks the same "
                "best-calibrated group.")
    listed = [f"- {flip.line()}" for flip in candidates if flip.beyond_noise]
    text = FLIP_RULE + "\n\n" + ("\n".join(listed) or "No ranking flip beyond the noise.")
    if within := len(candidates) - len(listed):
        plural = within > 1
        text += (f"\n\n{within} other pair{'s' if plural else ''} of ECE conventions or "
                 f"calibrators pick{'' if plural else 's'} a different best group only within "
                 "the noise (not listed).")
    return text
