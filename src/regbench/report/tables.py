"""The report's text: ``summary.csv`` (one row per job) and ``summary.md`` (the verdicts against
the baseline, one row per group with mean ± standard deviation over its completed seeds, the ranks,
the calibration and probe sections, the runs that did not complete, the plots)."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from regbench.files import atomic_write_bytes
from regbench.report.analysis import Analysis, analysis_figures
from regbench.report.calibration import (
    calibration_table_markdown,
    flip_text,
    unusable_calibration_files,
)
from regbench.report.comparisons import comparison_method_text, verdict_line
from regbench.report.duplicates import merge_line
from regbench.report.ensembles import EnsembleReport, build_ensembles, ensemble_section
from regbench.report.groups import (
    ABSENT,
    Grouping,
    did_not_learn,
    finite_values,
    format_mean_std,
    is_number,
    metric_value,
    show,
)
from regbench.report.jobs import Job
from regbench.report.ood import ood_section
from regbench.report.outputs import COMPARISONS_PNG, PLOT_FILES, RANKS_PNG
from regbench.report.probes import probe_sections
from regbench.report.ranks import ranking_lines
from regbench.report.shift import shift_section
from regbench.run.spec import (
    DID_NOT_LEARN,
    EPOCHS,
    GAP_ACC,
    REGULARIZER_KEY,
    SECONDS,
    SEED_KEY,
    TEST_ACC,
    TEST_ECE,
    TEST_ECE_TEMPERATURE,
    TEST_MEAN_CONFIDENCE,
    TEST_NLL,
)

# The per-group table: metrics.json key, column header, number format.
TABLE_COLUMNS = (
    (TEST_ACC, "test acc", ".4f"),
    (TEST_NLL, "test NLL", ".4f"),
    (TEST_ECE, "test ECE", ".4f"),
    (TEST_ECE_TEMPERATURE, "test ECE (TS)", ".4f"),
    (TEST_MEAN_CONFIDENCE, "mean confidence", ".4f"),
    (GAP_ACC, "gap acc", ".4f"),
    (EPOCHS, "epochs", ".1f"),
    (SECONDS, "seconds", ".1f"),
)
# Per-run bootstrap intervals of the test metrics (test-split sampling uncertainty): low key,
# high key, column header. Shown (as mean width over seeds) only when metrics.json has them.
BOOTSTRAP_COLUMNS = (
    ("test/acc_ci_low", "test/acc_ci_high", "test acc CI width"),
    ("test/ece_ci_low", "test/ece_ci_high", "test ECE CI width"),
)


# --- summary.csv --------------------------------------------------------------------------------

def metric_columns(jobs: Sequence[Job]) -> list[str]:
    """Every key holding a number in some job's metrics.json, in first-seen order (seed aside)."""
    columns: dict[str, None] = {}
    for job in jobs:
        columns.update({key: None for key, value in job.metrics.items()
                        if key != SEED_KEY and is_number(value)})
    return list(columns)


def csv_rows(jobs: Sequence[Job], grouping: Grouping) -> tuple[list[str], list[dict[str, Any]]]:
    settings_keys = [key for key in grouping.varying if key != REGULARIZER_KEY]
    metrics = metric_columns(jobs)
    flags = [DID_NOT_LEARN] if any(DID_NOT_LEARN in job.metrics for job in jobs) else []
    header = ["job", "status", "regularizer", *settings_keys, "seed", *metrics, *flags, "detail",
              "overrides", "merged"]
    rows = []
    for job in jobs:
        settings = job.settings or {}
        regularizer = settings.get(REGULARIZER_KEY) or "+".join(job.metrics.get(REGULARIZER_KEY) or [])
        seed = job.seed if job.seed is not None else job.metrics.get(SEED_KEY)
        row = {"job": job.name, "status": job.status, "regularizer": regularizer, "seed": seed,
               "detail": job.detail, "overrides": " ".join(job.overrides), "merged": "; ".join(job.merged)}
        row.update({key: show(settings.get(key, ABSENT)) for key in settings_keys})
        row.update({key: job.metrics.get(key) if is_number(job.metrics.get(key)) else ""
                    for key in metrics})
        row.update({key: json.dumps(job.metrics[key]) if key in job.metrics else "" for key in flags})
        rows.append(row)
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    """The table whole or not at all (files.atomic_write_bytes)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


# --- the group table ----------------------------------------------------------------------------

def markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def interval_widths(jobs: Iterable[Job], low: str, high: str) -> list[float]:
    widths = [(metric_value(job, high), metric_value(job, low)) for job in jobs]
    return [h - l for h, l in widths if h is not None and l is not None]


def bootstrap_columns(jobs: Iterable[Job]) -> list[tuple[str, str, str]]:
    jobs = list(jobs)
    return [column for column in BOOTSTRAP_COLUMNS
            if any(metric_value(job, column[0]) is not None for job in jobs)]


def markdown_table(grouping: Grouping) -> str:
    intervals = bootstrap_columns(job for group in grouping.groups for job in group.completed)
    warnings = [did_not_learn(group) for group in grouping.groups]
    header = ["settings", "seeds", *(title for _, title, _ in TABLE_COLUMNS),
              *(title for _, _, title in intervals), *(["warning"] if any(warnings) else [])]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" + "---:|" * (len(header) - 1)]
    for group, warning in zip(grouping.groups, warnings):
        done = group.completed
        cells = [markdown_cell(group.label), str(len(done))]
        cells += [format_mean_std(finite_values(done, key), spec, len(done))
                  for key, _, spec in TABLE_COLUMNS]
        for low, high, _ in intervals:
            widths = interval_widths(done, low, high)
            cells.append(f"{statistics.fmean(widths):.4f}" if widths else "–")
        if any(warnings):
            cells.append(f"⚠ {warning}" if warning else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_text(jobs: Sequence[Job], grouping: Grouping) -> str:
    text = (f"{len(jobs)} jobs: {status_counts(jobs)}. Each row is a group of runs that differ only "
            "in their seed: mean ± sample standard deviation over its completed seeds. TS: after "
            "temperature scaling fitted on the validation split; gap acc: train minus test accuracy.")
    if any(did_not_learn(group) for group in grouping.groups):
        text += (" ⚠: runs whose final training accuracy stayed near chance (metrics.json "
                 f"{DID_NOT_LEARN}), averaged in with the others.")
    if copies := sum(len(job.merged) for job in jobs):
        text += (f" {copies} more folders held copies of these runs, each run counted once (Runs "
                 "found in several folders).")
    if bootstrap_columns(job for group in grouping.groups for job in group.completed):
        text += (" CI width: the mean over seeds of each run's 95 % percentile-bootstrap interval "
                 "of the test metric (test examples resampled): wider than the ± spread over "
                 "seeds, the small test split dominates the uncertainty; narrower, the seeds do.")
    return text


# --- summary.md ---------------------------------------------------------------------------------

def problem_lines(jobs: Sequence[Job]) -> list[str]:
    lines = []
    for job in jobs:
        if job.completed:
            continue
        detail = f": {job.detail}" if job.detail else ""
        overrides = f" (`{' '.join(job.overrides)}`)" if job.overrides else ""
        lines.append(f"- `{job.name}` **{job.status}**{detail}{overrides}")
    return lines


def merge_section(jobs: Sequence[Job]) -> list[str]:
    """The runs found in several folders (report/duplicates.py), each counted once."""
    lines = [f"- {merge_line(job)}" for job in jobs if job.merged]
    return ["## Runs found in several folders", "\n".join(lines)] if lines else []


def status_counts(jobs: Sequence[Job]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def comparison_section(analysis: Analysis) -> list[str]:
    lines = [f"- {verdict_line(c)}" for c in analysis.comparisons]
    lines += [f"- {note}" for note in analysis.comparison_notes]
    parts = ["## Verdicts against the baseline"]
    if analysis.comparisons:
        parts.append(comparison_method_text(analysis.comparisons, analysis.selectors))
    parts.append("\n".join(lines) if lines else "No comparisons: only one group.")
    return parts


def ranking_section(analysis: Analysis, folder: Optional[Path] = None) -> list[str]:
    """The ranks, or why they are skipped (in words: no ranks.png is drawn then); ``folder``: the
    output folder, to say that a ranks.png already there is not this report's."""
    lines = ranking_lines(analysis.ranking) if analysis.ranking else []
    lines += [f"- {note}" for note in analysis.ranking_notes]
    if analysis.ranking is None:
        lines.append(f"- No {RANKS_PNG} drawn.")
    return ["## Ranks across settings", "\n".join(lines) or "- No ranking."]


def earlier_figures(folder: Optional[Path], analysis: Analysis) -> list[str]:
    """A line per figure of the analysis this report does not draw but the folder holds: an
    earlier report of these sweeps drew it. It is left there: the report never deletes a file it
    did not write itself in this invocation (it cannot tell one a user put there)."""
    drawn = set(analysis_figures(analysis).values())
    return [f"- ⚠ {name} in this folder is not from this report (it has nothing to draw there "
            "now): an earlier report or someone else wrote it, and it is left in place; it does "
            "not describe these runs."
            for name in (COMPARISONS_PNG, RANKS_PNG)
            if folder is not None and name not in drawn and (folder / name).is_file()]


def calibration_section(grouping: Grouping) -> list[str]:
    """Per group, every calibration metric raw and after each calibrator, and the ranking flips
    between ECE conventions; nothing when no run has the calibration panel's metrics."""
    table = calibration_table_markdown(grouping.groups)
    if not table:
        return []
    return ["## Calibration", "Mean ± std over seeds; raw is the softmax as trained, the other "
            "columns after a calibrator fitted on the validation split (README: What a run records).",
            table, flip_text(grouping.groups)]


def unusable_file_notes(grouping: Grouping) -> list[str]:
    lines = unusable_calibration_files(grouping.groups)
    return ["\n".join(f"- ⚠ {line}" for line in lines)] if lines else []


def markdown_report(sweep: Path | Sequence[Path], jobs: Sequence[Job], grouping: Grouping,
                    analysis: Optional[Analysis] = None,
                    ensembles: Optional[EnsembleReport] = None) -> str:
    """``ensembles``: the report's ensembles when already built (make_report writes their CSV)."""
    sweeps = [sweep] if isinstance(sweep, Path) else list(sweep)
    analysis = analysis or Analysis()
    ensembles = ensembles or build_ensembles(grouping, analysis.selectors)
    problems = problem_lines(jobs)
    title = (f"# Sweep {sweeps[0].resolve().name}" if len(sweeps) == 1 else
             "# Sweeps " + ", ".join(str(s) for s in sweeps))
    images = {**PLOT_FILES, **analysis_figures(analysis)}
    parts = [
        title,
        *comparison_section(analysis),
        "## Groups",
        table_text(jobs, grouping),
        markdown_table(grouping),
        *ranking_section(analysis, sweeps[0]),
        *calibration_section(grouping),
        *shift_section(grouping, analysis.selectors),
        *ood_section(grouping.groups),
        *ensemble_section(ensembles),
        *probe_sections(grouping.groups),
        "## Runs that did not complete",
        "\n".join(problems) if problems else "None.",
        *merge_section(jobs),
        "## Plots",
        *unusable_file_notes(grouping),
        *(["\n".join(lines)] if (lines := earlier_figures(sweeps[0], analysis)) else []),
        "\n".join(f"![{name}]({file})" for name, file in images.items()),
    ]
    return "\n\n".join(parts) + "\n"
