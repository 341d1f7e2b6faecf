"""A sweep's results at a glance: ``python -m regbench.report <sweep folder>`` / ``regbench-report``.

Reads every job folder of a Hydra multirun (any folder holding ``.hydra/``): its experiment
settings from ``spec.json`` (or, for a job that never started, from ``.hydra/config.yaml`` by the
same rule, ``spec.experiment_settings``), its results from ``metrics.json`` and
``test_calibration.json``. Runs whose experiment settings are equal form one group: they differ
only in their seed. Writes into the sweep folder:

- ``summary.csv``: one row per job (settings that vary, seed, every numeric metric);
- ``summary.md``: one row per group (mean ± standard deviation over completed seeds), then the
  runs that failed or have not finished;
- ``accuracy_vs_ece.png``, ``reliability.png``, ``confidence_hist.png``.

Safe on a sweep that is still running or partly failed: a job without ``metrics.json`` is listed as
unfinished, one whose status is not ``completed`` as failed; neither is averaged.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import statistics
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from matplotlib import colormaps
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from regbench.config import one_line
from regbench.spec import (
    CALIBRATION_FILE,
    HISTORY_FILE,
    HYDRA_SUBDIR,
    METRICS_FILE,
    SEED_KEY,
    SPEC_FILE,
    Status,
    canonical,
    experiment_settings,
)

PROGRAM = "regbench-report"

# The per-group table: metrics.json key, column header, number format.
TABLE_COLUMNS = (
    ("test/acc", "test acc", ".4f"),
    ("test/nll", "test NLL", ".4f"),
    ("test/ece", "test ECE", ".4f"),
    ("test/ece@temperature", "test ECE (TS)", ".4f"),
    ("test/mean_confidence", "mean confidence", ".4f"),
    ("gap/acc", "gap acc", ".4f"),
    ("epochs", "epochs", ".1f"),
    ("seconds", "seconds", ".1f"),
)
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOT_FILES = {"accuracy_vs_ece": "accuracy_vs_ece.png", "reliability": "reliability.png",
              "confidence_hist": "confidence_hist.png"}
LABEL_WIDTH = 32  # characters per line of a group's label inside plots


class ReportError(Exception):
    """The report cannot be made (a user mistake such as a wrong folder): one line, exit 2."""


# --- reading one job ----------------------------------------------------------------------------

@dataclass
class Job:
    """One job folder of the sweep."""

    name: str  # folder relative to the sweep folder
    folder: Path
    status: str
    settings: Optional[dict[str, Any]]  # comparable settings; None when the config is unreadable
    seed: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    detail: str = ""  # why it failed or is unfinished
    overrides: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.status == Status.completed.value


def natural_key(name: str) -> tuple:
    """Job folders 0, 1, ..., 10 in numeric order; other names alphabetically after them."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in Path(name).parts)


def find_job_folders(sweep: Path) -> list[Path]:
    """Every folder holding ``.hydra/`` (Hydra writes it before the job starts)."""
    folders = {path.parent for path in sweep.rglob(".hydra") if path.is_dir()}
    return sorted(folders, key=lambda folder: natural_key(job_name(sweep, folder)))


def job_name(sweep: Path, folder: Path) -> str:
    return str(folder.relative_to(sweep))


def resolved_container(config: Any) -> dict[str, Any]:
    """The config as plain data, interpolations resolved. ``${hydra:...}`` cannot be resolved
    outside the run: then every value is compared as written, which is the same in every job."""
    try:
        return OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    except Exception:  # omegaconf raises several error types for unresolvable interpolations
        return OmegaConf.to_container(config, resolve=False, enum_to_str=True)


def read_config(folder: Path) -> tuple[dict[str, Any], Any, list[str]]:
    """(experiment settings, seed, command-line overrides) of one job. The settings are those the
    run itself recorded in spec.json; a job that never started has only its .hydra/config.yaml,
    from which the same function derives them."""
    spec_path = folder / SPEC_FILE
    if spec_path.is_file():
        identity = dict(json.loads(spec_path.read_text())["identity"])
        seed = identity.pop(SEED_KEY, None)
        settings = identity
    else:
        config = resolved_container(OmegaConf.load(folder / HYDRA_SUBDIR / "config.yaml"))
        settings, seed = experiment_settings(config), config.get(SEED_KEY)
    overrides_path = folder / HYDRA_SUBDIR / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_path)] if overrides_path.is_file() else []
    return settings, seed, overrides


def history_length(folder: Path) -> int:
    path = folder / HISTORY_FILE
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def load_job(sweep: Path, folder: Path) -> Job:
    """One job, whatever state it is in; problems become its status, never an exception."""
    name = job_name(sweep, folder)
    metrics_path = folder / METRICS_FILE
    try:
        settings, seed, overrides = read_config(folder)
    except Exception as error:  # a torn or hand-edited config must not stop the report
        job = Job(name, folder, Status.unreadable.value, None, detail=f"job settings: {one_line(error)}")
        with contextlib.suppress(OSError, ValueError):  # its metrics still belong in summary.csv
            job.metrics = read_metrics(metrics_path)
        return job
    job = Job(name, folder, Status.unfinished.value, settings, seed, overrides=overrides)
    if not metrics_path.is_file():
        epochs = settings.get("trainer.epochs", "?")
        job.detail = (f"no metrics.json yet (running or interrupted): {history_length(folder)}"
                      f" of {epochs} epochs in history.jsonl")
        return job
    try:
        job.metrics = read_metrics(metrics_path)
    except (OSError, ValueError) as error:
        job.status, job.detail = Status.unreadable.value, f"{METRICS_FILE}: {one_line(error)}"
        return job
    job.status = str(job.metrics.get("status", "unknown"))
    if not job.completed:
        job.detail = " ".join(str(job.metrics.get("error", "")).split())
    return job


def read_metrics(path: Path) -> dict[str, Any]:
    metrics = json.loads(path.read_text())
    if not isinstance(metrics, dict):
        raise ValueError(f"expected a JSON object, found {type(metrics).__name__}")
    return metrics


def load_jobs(sweep: Path) -> list[Job]:
    if not sweep.is_dir():
        raise ReportError(f"{sweep} does not exist or is not a folder")
    folders = find_job_folders(sweep)
    if not folders:
        raise ReportError(f"no job folders (folders holding .hydra/) in {sweep}")
    return [load_job(sweep, folder) for folder in folders]


# --- grouping -----------------------------------------------------------------------------------

ABSENT = object()


def setting_key(value: Any) -> str:
    """A hashable, order-stable form of a setting, absent ones included."""
    return "<absent>" if value is ABSENT else canonical(value)


def show(value: Any) -> str:
    """A setting as a user would type it on the command line."""
    if value is ABSENT:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


@dataclass
class Group:
    label: str
    settings: dict[str, Any]  # the varying settings of this group
    jobs: list[Job]

    @property
    def completed(self) -> list[Job]:
        return [job for job in self.jobs if job.completed]


@dataclass
class Grouping:
    varying: list[str]  # every setting that differs between jobs ("regularizer" first)
    groups: list[Group]


def varying_keys(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """Settings that differ between jobs, missing ones included; "regularizer" first."""
    keys = sorted({key for one in settings for key in one})
    varying = [key for key in keys
               if len({setting_key(one.get(key, ABSENT)) for one in settings}) > 1]
    return sorted(varying, key=lambda key: (key != "regularizer", key))


def label_keys(settings: Sequence[Mapping[str, Any]], varying: Sequence[str]) -> list[str]:
    """The varying keys worth showing: those with two different values somewhere. A key that is
    only present or absent (regularizer.label_smoothing.epsilon next to regularizer=none) follows
    from another varying key and would only repeat it."""
    return [key for key in varying
            if len({setting_key(one[key]) for one in settings if key in one}) > 1]


def make_label(regularizer: str, values: Mapping[str, Any], keys: Iterable[str]) -> str:
    parts = [regularizer] + [f"{key}={show(values.get(key, ABSENT))}" for key in keys
                             if key != "regularizer" and key in values]
    return ", ".join(parts)


def group_jobs(jobs: Sequence[Job]) -> Grouping:
    """Jobs with the same settings, seed aside, in the order of their first job."""
    readable = [job for job in jobs if job.settings is not None]
    all_settings = [job.settings for job in readable]
    varying = varying_keys(all_settings)
    buckets: dict[tuple, list[Job]] = {}
    for job in readable:
        buckets.setdefault(tuple(setting_key(job.settings.get(k, ABSENT)) for k in varying), []).append(job)
    shown = label_keys(all_settings, varying)
    labels = [make_label(members[0].settings["regularizer"], members[0].settings, shown)
              for members in buckets.values()]
    if len(set(labels)) < len(labels):  # rare: only presence tells groups apart; show everything
        labels = [make_label(members[0].settings["regularizer"], members[0].settings, varying)
                  for members in buckets.values()]
    groups = [Group(label, {k: members[0].settings.get(k, ABSENT) for k in varying}, members)
              for label, members in zip(labels, buckets.values())]
    return Grouping(varying, groups)


# --- statistics ---------------------------------------------------------------------------------

def finite_values(jobs: Iterable[Job], key: str) -> list[float]:
    values = [job.metrics.get(key) for job in jobs]
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1: seeds are a sample); std 0 for one value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[float], spec: str, runs: int) -> str:
    """"m ± s" over seeds; just "m" for one seed; "–" for none; "(n=k)" when some runs lack it."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    text = f"{mean:{spec}}" if len(values) == 1 else f"{mean:{spec}} ± {std:{spec}}"
    return text if len(values) == runs else f"{text} (n={len(values)})"


# --- summary.csv --------------------------------------------------------------------------------

def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_columns(jobs: Sequence[Job]) -> list[str]:
    """Every key holding a number in some job's metrics.json, in first-seen order (seed aside)."""
    columns: dict[str, None] = {}
    for job in jobs:
        columns.update({key: None for key, value in job.metrics.items()
                        if key != "seed" and is_number(value)})
    return list(columns)


def csv_rows(jobs: Sequence[Job], grouping: Grouping) -> tuple[list[str], list[dict[str, Any]]]:
    settings_keys = [key for key in grouping.varying if key != "regularizer"]
    metrics = metric_columns(jobs)
    header = ["job", "status", "regularizer", *settings_keys, "seed", *metrics, "detail", "overrides"]
    rows = []
    for job in jobs:
        settings = job.settings or {}
        regularizer = settings.get("regularizer") or "+".join(job.metrics.get("regularizer") or [])
        seed = job.seed if job.seed is not None else job.metrics.get("seed")
        row = {"job": job.name, "status": job.status, "regularizer": regularizer, "seed": seed,
               "detail": job.detail, "overrides": " ".join(job.overrides)}
        row.update({key: show(settings.get(key, ABSENT)) for key in settings_keys})
        row.update({key: job.metrics.get(key) if is_number(job.metrics.get(key)) else ""
                    for key in metrics})
        rows.append(row)
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


# --- summary.md ---------------------------------------------------------------------------------

def markdown_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(grouping: Grouping) -> str:
    header = ["settings", "seeds", *(title for _, title, _ in TABLE_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" + "---:|" * (len(header) - 1)]
    for group in grouping.groups:
        done = group.completed
        cells = [markdown_cell(group.label), str(len(done))]
        cells += [format_mean_std(finite_values(done, key), spec, len(done))
                  for key, _, spec in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def problem_lines(jobs: Sequence[Job]) -> list[str]:
    lines = []
    for job in jobs:
        if job.completed:
            continue
        detail = f": {job.detail}" if job.detail else ""
        overrides = f" (`{' '.join(job.overrides)}`)" if job.overrides else ""
        lines.append(f"- `{job.name}` **{job.status}**{detail}{overrides}")
    return lines


def status_counts(jobs: Sequence[Job]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def markdown_report(sweep: Path, jobs: Sequence[Job], grouping: Grouping) -> str:
    problems = problem_lines(jobs)
    parts = [
        f"# Sweep {sweep.resolve().name}",
        f"{len(jobs)} jobs: {status_counts(jobs)}. Each row is a group of runs that differ only in "
        "their seed: mean ± sample standard deviation over its completed seeds. TS: after "
        "temperature scaling fitted on the validation split; gap acc: train minus test accuracy.",
        markdown_table(grouping),
        "## Runs that did not complete",
        "\n".join(problems) if problems else "None.",
        "## Plots",
        "\n".join(f"![{name}]({file})" for name, file in PLOT_FILES.items()),
    ]
    return "\n\n".join(parts) + "\n"


# --- plots --------------------------------------------------------------------------------------

MARKERS = "osD^vP*Xph<>"


def group_styles(count: int) -> list[dict[str, Any]]:
    """A color and a marker per group; with more groups than colors the markers still differ."""
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [{"color": palette(i % palette.N), "marker": MARKERS[i % len(MARKERS)]}
            for i in range(count)]


def seeds_text(count: int) -> str:
    return f"{count} seed" if count == 1 else f"{count} seeds"


def wrap(label: str) -> str:
    return "\n".join(textwrap.wrap(label, LABEL_WIDTH)) or label


def empty_figure(message: str) -> Figure:
    figure = Figure(figsize=(5, 3), dpi=100)
    figure.text(0.5, 0.5, message, ha="center", va="center")
    return figure


def accuracy_vs_ece(grouping: Grouping) -> Figure:
    """One point per group at its mean, error bars one standard deviation over seeds. Points carry
    their group's number and the legend names it: full labels next to points would overlap."""
    points = []
    for number, (group, style) in enumerate(zip(grouping.groups, group_styles(len(grouping.groups))), 1):
        accuracy = finite_values(group.completed, "test/acc")
        ece = finite_values(group.completed, "test/ece")
        if accuracy and ece:
            points.append((number, group, style, mean_std(ece), mean_std(accuracy)))
    if not points:
        return empty_figure("no completed runs yet")
    figure = Figure(figsize=(8.5, 5.5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for number, group, style, (x, x_std), (y, y_std) in points:
        axes.errorbar(x, y, xerr=x_std, yerr=y_std, linestyle="none", capsize=3, **style,
                      label=f"{number}: {wrap(group.label)} ({seeds_text(len(group.completed))})")
        axes.annotate(str(number), (x, y), xytext=(4, 4), textcoords="offset points",
                      fontsize="small", color=style["color"])
    axes.set(xlabel="test ECE (lower is better calibrated)", ylabel="test accuracy",
             title="accuracy vs calibration (mean ± std over seeds)")
    axes.grid(alpha=0.3)
    legend_outside(axes, len(points))
    return figure


CALIBRATION_KEYS = {"bin_edges", "bin_confidence", "bin_accuracy", "bin_count", "histogram_edges",
                    "histogram_correct", "histogram_incorrect"}


def calibration_files(group: Group) -> list[dict[str, Any]]:
    """The completed runs' test_calibration.json files (a missing or malformed one is skipped)."""
    summaries = []
    for job in group.completed:
        try:
            summary = json.loads((job.folder / CALIBRATION_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and CALIBRATION_KEYS <= summary.keys():
            summaries.append(summary)
    return summaries


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


def legend_outside(axes, count: int) -> None:
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small",
                ncols=1 if count <= 20 else 2, frameon=False)


def reliability(grouping: Grouping) -> Figure:
    """Every group's pooled reliability curve over the diagonal."""
    curves = []
    for group, style in zip(grouping.groups, group_styles(len(grouping.groups))):
        confidence, accuracy, counts = pool_reliability(calibration_files(group))
        filled = [(c, a) for c, a, n in zip(confidence, accuracy, counts) if n]
        if filled:
            curves.append((group, style, filled))
    if not curves:
        return empty_figure(f"no {CALIBRATION_FILE} from completed runs yet")
    figure = Figure(figsize=(8.5, 5.5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for group, style, filled in curves:
        x, y = zip(*filled)
        axes.plot(x, y, "-", markersize=4, **style,
                  label=f"{wrap(group.label)} ({seeds_text(len(group.completed))})")
    axes.set(xlim=(0, 1), ylim=(0, 1), aspect="equal",
             xlabel="mean confidence in bin (max softmax probability)", ylabel="accuracy in bin",
             title="test reliability, bins pooled over seeds")
    axes.grid(alpha=0.3)
    legend_outside(axes, len(curves) + 1)
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
    """Small multiples, one panel per group (overlays become unreadable with many groups):
    the share of test examples per confidence bin, stacked correct / incorrect."""
    panels = [(group, pooled) for group in grouping.groups
              if (pooled := pooled_histograms(calibration_files(group)))]
    if not panels:
        return empty_figure(f"no {CALIBRATION_FILE} from completed runs yet")
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * rows + 0.6), dpi=100, layout="constrained")
    grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for axes in grid.flat[len(panels):]:
        axes.set_visible(False)
    for axes, (group, (edges, correct, incorrect)) in zip(grid.flat, panels):
        total = sum(correct) + sum(incorrect) or 1
        widths = [hi - lo for lo, hi in zip(edges[:-1], edges[1:])]
        right = [c / total for c in correct]
        wrong = [c / total for c in incorrect]
        axes.bar(edges[:-1], right, width=widths, align="edge", color="tab:green", label="correct")
        axes.bar(edges[:-1], wrong, width=widths, align="edge", bottom=right, color="tab:red",
                 label="incorrect")
        done = group.completed
        confidence = finite_values(done, "test/mean_confidence")
        accuracy = finite_values(done, "test/acc")
        summary = (f", acc {statistics.fmean(accuracy):.3f}, mean conf {statistics.fmean(confidence):.3f}"
                   if confidence and accuracy else "")
        axes.set_title(f"{wrap(group.label)}\n{seeds_text(len(done))}{summary}", fontsize="small")
        axes.set_xlim(0, 1)
    for axes in grid[-1]:
        axes.set_xlabel("confidence")
    for axes in grid[:, 0]:
        axes.set_ylabel("share of test examples")
    grid.flat[0].legend(loc="upper left", fontsize="x-small")
    figure.suptitle("test confidence, pooled over seeds")
    return figure


def write_plots(sweep: Path, grouping: Grouping) -> None:
    figures = {
        "accuracy_vs_ece": accuracy_vs_ece(grouping),
        "reliability": reliability(grouping),
        "confidence_hist": confidence_histograms(grouping),
    }
    for name, figure in figures.items():
        figure.savefig(sweep / PLOT_FILES[name])


# --- entrypoint ---------------------------------------------------------------------------------

def make_report(sweep: Path) -> str:
    """Write every output into ``sweep``; returns summary.md's text."""
    jobs = load_jobs(sweep)
    grouping = group_jobs(jobs)
    header, rows = csv_rows(jobs, grouping)
    write_csv(sweep / SUMMARY_CSV, header, rows)
    text = markdown_report(sweep, jobs, grouping)
    (sweep / SUMMARY_MD).write_text(text)
    write_plots(sweep, grouping)
    return text


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Summarize a regbench sweep: tables and plots, seeds grouped.")
    parser.add_argument("sweep", type=Path, help="the multirun folder (holding one folder per job)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        text = make_report(args.sweep)
    except ReportError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(text, end="")
    outputs = ", ".join([SUMMARY_CSV, SUMMARY_MD, *PLOT_FILES.values()])
    print(f"\nwrote {outputs} in {args.sweep}")


if __name__ == "__main__":
    main()
