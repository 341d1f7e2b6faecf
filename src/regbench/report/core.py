"""A sweep's results at a glance: ``python -m regbench.report <sweep folder>`` / ``regbench-report``.

Reads every job folder of a Hydra multirun (any folder holding ``.hydra/``): its experiment
settings from ``spec.json`` (or, for a job that never started, from ``.hydra/config.yaml`` by the
same rule, ``spec.experiment_settings``), its results from ``metrics.json`` and
``test_calibration.json``. Runs whose experiment settings are equal form one group: they differ
only in their seed. Writes into the sweep folder:

- ``summary.csv``: one row per job (settings that vary, seed, every numeric metric);
- ``summary.md``: one row per group (mean ± standard deviation over completed seeds), then the
  runs that failed or have not finished;
- ``accuracy_vs_ece.png``, ``reliability.png``, ``confidence_hist.png``;
- ``comparisons.csv`` / ``comparisons.png``: every group against its baseline group (by default
  ``regularizer=none`` with the same other settings), paired by seed, per key metric: mean
  difference, 95 % t-interval, paired t-test, Holm-adjusted p, probability of improvement, verdict;
- ``ranks.png``: with several datasets/models ("blocks"), the regularizers' average ranks, Friedman
  test and Nemenyi critical-difference diagram (Demšar 2006).

Several sweep folders can be given together; their jobs are pooled and the outputs go to the first.

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

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from omegaconf import OmegaConf

from regbench.config import one_line
from regbench.evaluation.figures import (
    CORRECT_COLOR,
    INCORRECT_COLOR,
    draw_reliability,
    drawing_from_bins,
    reliability_legend_handles,
)
from regbench.report.calibration import calibration_table_markdown, ranking_flips
from regbench.report.probes import probe_sections, write_probe_plots
from regbench.report.statistics import (
    ALPHA,
    INDISTINGUISHABLE,
    LEVEL,
    POWER,
    TOO_FEW_SEEDS,
    ZERO_VARIANCE_TEST,
    PairedComparison,
    RankTest,
    cliques,
    holm,
    paired_comparison,
    probability_of_improvement,
    rank_test,
    seeds_needed,
    sign_flip_seeds_needed,
    verdict,
)
from regbench.run.folder import RunFolder, find_job_folders
from regbench.run.spec import (
    CALIBRATION_FILE,
    METRICS_FILE,
    SEED_KEY,
    SPEC_FILE,
    Status,
    canonical,
    experiment_settings,
    lower_is_better,
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


def job_name(sweep: Path, folder: Path) -> str:
    return str(folder.relative_to(sweep))


def resolved_container(config: Any) -> dict[str, Any]:
    """The config as plain data, interpolations resolved. ``${hydra:...}`` cannot be resolved
    outside the run: then every value is compared as written, which is the same in every job."""
    try:
        return OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    except Exception:  # omegaconf raises several error types for unresolvable interpolations
        return OmegaConf.to_container(config, resolve=False, enum_to_str=True)


def read_config(folder: RunFolder) -> tuple[dict[str, Any], Any, list[str]]:
    """(experiment settings, seed, command-line overrides) of one job: the settings the run itself
    recorded in spec.json. An older regbench's job that never started has only .hydra/config.yaml,
    from which the same rule (``spec.experiment_settings``) derives them."""
    if folder.file(SPEC_FILE).is_file():
        identity = dict(folder.spec_json()["identity"])
        seed = identity.pop(SEED_KEY, None)
        settings = identity
    else:
        config = resolved_container(folder.hydra_config())
        settings, seed = experiment_settings(config), config.get(SEED_KEY)
    return settings, seed, folder.overrides() or []


def load_job(sweep: Path, path: Path) -> Job:
    """One job, whatever state it is in; problems become its status, never an exception."""
    name, folder = job_name(sweep, path), RunFolder(path)
    try:
        settings, seed, overrides = read_config(folder)
    except Exception as error:  # a torn or hand-edited config must not stop the report
        job = Job(name, path, Status.unreadable.value, None, detail=f"job settings: {one_line(error)}")
        with contextlib.suppress(OSError, ValueError):  # its metrics still belong in summary.csv
            job.metrics = folder.metrics() or {}
        return job
    job = Job(name, path, Status.unfinished.value, settings, seed, overrides=overrides)
    try:
        metrics = folder.metrics()
    except (OSError, ValueError) as error:
        job.status, job.detail = Status.unreadable.value, f"{METRICS_FILE}: {one_line(error)}"
        return job
    if metrics is None:
        epochs = settings.get("trainer.epochs", "?")
        job.detail = (f"no metrics.json yet (running or interrupted): {len(folder.history())}"
                      f" of {epochs} epochs in history.jsonl")
        return job
    job.metrics = metrics
    job.status = str(job.metrics.get("status", "unknown"))
    if not job.completed:
        job.detail = " ".join(str(job.metrics.get("error", "")).split())
    return job


def load_jobs(sweep: Path) -> list[Job]:
    if not sweep.is_dir():
        raise ReportError(f"{sweep} does not exist or is not a folder")
    folders = find_job_folders(sweep)
    if not folders:
        raise ReportError(f"no job folders (folders holding {SPEC_FILE}) in {sweep}")
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


# --- comparisons against a baseline ---------------------------------------------------------------

# The metrics every group is compared on: metrics.json key, name in sentences, whether it is a
# fraction shown in percentage points.
KEY_METRICS = (
    ("test/acc", "test accuracy", True),
    ("test/nll", "test NLL", False),
    ("test/ece", "test ECE", False),
    ("test/ece@temperature", "test ECE after temperature scaling", False),
    ("test/mean_confidence", "mean confidence", False),
    ("gap/acc", "accuracy gap", True),
)
METRIC_NAMES = {key: name for key, name, _ in KEY_METRICS}
PERCENT_METRICS = {key for key, _, percent in KEY_METRICS if percent}
COMPARISONS_CSV = "comparisons.csv"
COMPARISONS_PNG = "comparisons.png"
RANKS_PNG = "ranks.png"
COMPARISON_COLUMNS = ("group", "baseline", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high",
                      "p_value", "p_holm", "prob_improvement", "verdict",
                      "seeds_needed", "sd_diff", "test", "dropped_seeds")
DEFAULT_BASELINE = (("regularizer", "none"),)


def is_regularizer_key(key: str) -> bool:
    return key == "regularizer" or key.startswith("regularizer.")


def parse_selectors(texts: Sequence[str]) -> list[tuple[str, str]]:
    """``["regularizer=dropout", "optimizer.lr=0.1"]`` -> [(key, value text), ...]."""
    selectors = []
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ReportError(f"--baseline {text!r} is not of the form key=value "
                              "(for example regularizer=dropout)")
        selectors.append((key.strip(), value.strip()))
    return selectors


def setting_matches(key: str, value: Any, text: str) -> bool:
    """Whether a setting equals what a user typed, as Hydra would read it: "0.1", "1e-1" and
    "[dropout,label_smoothing]" (for regularizer, the sorted names joined with '+') all work."""
    if value is ABSENT:
        return False
    if show(value) == text:
        return True
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    if key == "regularizer" and isinstance(parsed, list):
        parsed = "+".join(sorted(map(str, parsed))) or "none"
    if is_number(value) and isinstance(parsed, str):
        with contextlib.suppress(ValueError):
            parsed = float(parsed)  # YAML 1.1 reads 1e-4 as a string
    if is_number(value) and is_number(parsed):
        return math.isclose(float(value), float(parsed), rel_tol=1e-12)
    return canonical(parsed) == canonical(value)


def full_settings(group: Group) -> dict[str, Any]:
    """Every comparable setting of the group (constant ones included), from its first job."""
    return group.jobs[0].settings or {}


def group_matches(group: Group, selectors: Sequence[tuple[str, str]]) -> bool:
    settings = full_settings(group)
    return all(setting_matches(key, settings.get(key, ABSENT), text) for key, text in selectors)


def check_selectors(grouping: Grouping, selectors: Sequence[tuple[str, str]]) -> None:
    """A --baseline that matches no group is a user mistake: say which values exist."""
    for key, text in selectors:
        if any(group_matches(group, [(key, text)]) for group in grouping.groups):
            continue
        values = sorted({show(full_settings(group)[key]) for group in grouping.groups
                         if key in full_settings(group)})
        if values:
            available = f"{key} takes {', '.join(values)}"
        else:
            available = f"no setting named {key}; settings that vary: {', '.join(grouping.varying) or 'none'}"
        raise ReportError(f"--baseline {key}={text} matches no group ({available})")
    if selectors and not any(group_matches(group, selectors) for group in grouping.groups):
        raise ReportError(f"--baseline {' '.join(f'{k}={v}' for k, v in selectors)} matches no "
                          "group: each selector matches some group, but no group matches all")


def matched_keys(varying: Sequence[str], selectors: Sequence[tuple[str, str]]) -> list[str]:
    """The settings a group and its baseline must share: every varying one except those the
    selectors name; when they name the regularizer, its parameters (regularizer.*) are free too
    (label_smoothing's epsilon does not exist in the none group)."""
    named = {key for key, _ in selectors}
    regularizer_named = any(is_regularizer_key(key) for key in named)
    return [key for key in varying
            if key not in named and not (regularizer_named and is_regularizer_key(key))]


def find_baselines(grouping: Grouping, selectors: Sequence[tuple[str, str]]
                   ) -> tuple[list[tuple[Group, Group]], list[str]]:
    """(group, its baseline) for every group that has exactly one; notes for the others."""
    candidates = [group for group in grouping.groups if group_matches(group, selectors)]
    selector_text = " ".join(f"{key}={text}" for key, text in selectors)
    if not candidates:
        return [], [f"No baseline group ({selector_text}) in this sweep, so no comparisons; "
                    "choose one with --baseline key=value."]
    keys = matched_keys(grouping.varying, selectors)
    pairs, notes = [], []
    for group in grouping.groups:
        if group in candidates:
            continue  # a baseline is not compared with itself or with another baseline
        same = [c for c in candidates
                if all(canonical(c.settings.get(k, ABSENT)) == canonical(group.settings.get(k, ABSENT))
                       for k in keys)]
        if len(same) == 1:
            pairs.append((group, same[0]))
        elif not same:
            notes.append(f"{group.label}: no baseline ({selector_text} with the same other "
                         "settings), not compared.")
        else:
            notes.append(f"{group.label}: several baseline groups match ({', '.join(c.label for c in same)}); "
                         "not compared: add a selector to --baseline to pick one.")
    return pairs, notes


def runs_by_seed(jobs: Iterable[Job]) -> dict[Any, Job]:
    """Completed runs by seed; of two runs with one seed (pooled sweep folders) the first."""
    runs: dict[Any, Job] = {}
    for job in jobs:
        if job.completed:
            runs.setdefault(job.seed, job)
    return runs


def seed_text(seeds: Iterable[Any]) -> str:
    return ", ".join(map(str, sorted(seeds, key=str)))


def pair_runs(group: Group, baseline: Group) -> tuple[list[tuple[Job, Job]], str]:
    """Same-seed (group run, baseline run) pairs, and which seeds had no partner and why."""
    ours, theirs = runs_by_seed(group.jobs), runs_by_seed(baseline.jobs)
    pairs = [(ours[seed], theirs[seed]) for seed in ours if seed in theirs]
    dropped = []
    if missing := set(theirs) - set(ours):
        dropped.append(f"seed {seed_text(missing)} not completed in {group.label}")
    if missing := set(ours) - set(theirs):
        dropped.append(f"seed {seed_text(missing)} not completed in {baseline.label}")
    return pairs, "; ".join(dropped)


def metric_value(job: Job, key: str) -> Optional[float]:
    value = job.metrics.get(key)
    return float(value) if is_number(value) and math.isfinite(value) else None


@dataclass
class Comparison:
    """One group against its baseline on one metric."""

    group: Group
    baseline: Group
    metric: str
    paired: PairedComparison
    prob_improvement: float
    dropped_seeds: str
    p_holm: float = math.nan
    verdict: str = TOO_FEW_SEEDS
    seeds_needed: Optional[int] = None


def compare(group: Group, baseline: Group, metric: str) -> Comparison:
    pairs, dropped = pair_runs(group, baseline)
    values = [(metric_value(ours, metric), metric_value(theirs, metric)) for ours, theirs in pairs]
    values = [(x, y) for x, y in values if x is not None and y is not None]
    paired = paired_comparison([x for x, _ in values], [y for _, y in values])
    improvement = probability_of_improvement(finite_values(group.completed, metric),
                                             finite_values(baseline.completed, metric))
    return Comparison(group, baseline, metric, paired, improvement, dropped)


def build_comparisons(jobs: Sequence[Job], grouping: Grouping,
                      selectors: Sequence[tuple[str, str]]) -> tuple[list[Comparison], list[str]]:
    """Every (group, baseline) pair on every key metric some job recorded; Holm's adjustment runs
    over all comparisons of one metric, so 10 regularizers against none count as 10 tests."""
    pairs, notes = find_baselines(grouping, selectors)
    recorded = {key for job in jobs for key, value in job.metrics.items() if is_number(value)}
    comparisons = []
    for metric, _, _ in KEY_METRICS:
        if metric not in recorded:
            continue
        family = [compare(group, baseline, metric) for group, baseline in pairs]
        for comparison, adjusted in zip(family, holm([c.paired.p_value for c in family])):
            comparison.p_holm = adjusted
            comparison.verdict = verdict(comparison.paired, adjusted)
            if comparison.verdict == INDISTINGUISHABLE:
                comparison.seeds_needed = (
                    sign_flip_seeds_needed() if comparison.paired.test == ZERO_VARIANCE_TEST
                    else seeds_needed(comparison.paired.mean_diff, comparison.paired.sd_diff))
        comparisons += family
    for group, baseline in pairs:
        if dropped := pair_runs(group, baseline)[1]:
            notes.append(f"{group.label} vs {baseline.label}: dropped {dropped}.")
    return comparisons, notes


def comparison_rows(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """comparisons.csv rows: full-precision numbers, empty cells for what was not computed."""
    def number(value: Optional[float]) -> Any:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value

    return [{
        "group": c.group.label, "baseline": c.baseline.label, "metric": c.metric,
        "n_pairs": c.paired.n_pairs, "mean_diff": number(c.paired.mean_diff),
        "ci_low": number(c.paired.ci_low), "ci_high": number(c.paired.ci_high),
        "p_value": number(c.paired.p_value), "p_holm": number(c.p_holm),
        "prob_improvement": number(c.prob_improvement), "verdict": c.verdict,
        "seeds_needed": number(c.seeds_needed), "sd_diff": number(c.paired.sd_diff),
        "test": c.paired.test, "dropped_seeds": c.dropped_seeds,
    } for c in comparisons]


def format_p(p: float, alpha: float = ALPHA) -> str:
    """Two significant digits, more where rounding would put p on the other side of alpha
    (0.0498 as "0.05" next to "higher" would read as a contradiction)."""
    if p < 0.001:
        return f"{p:.1e}"
    for digits in (2, 3, 4, 6):
        text = f"{p:.{digits}g}"
        if (float(text) < alpha) == (p < alpha):
            return text
    return repr(p)


def format_difference(metric: str, value: float, sign: bool = True) -> str:
    """Accuracy-like metrics in percentage points, the others in their own units."""
    if metric in PERCENT_METRICS:
        return f"{100 * value:{'+' if sign else ''}.2f}"
    return f"{value:{'+' if sign else ''}.4f}"


def verdict_line(c: Comparison) -> str:
    """"label_smoothing vs none: test accuracy +0.91 pp [0.35, 1.47], p_holm = 0.012, higher"."""
    name = METRIC_NAMES.get(c.metric, c.metric)
    unit = " pp" if c.metric in PERCENT_METRICS else ""
    head = f"{c.group.label} vs {c.baseline.label}: {name}"
    paired = c.paired
    pairs = f"{paired.n_pairs} pair" + ("" if paired.n_pairs == 1 else "s")
    if paired.n_pairs == 0:
        return f"{head}: no seed completed on both sides, {TOO_FEW_SEEDS} for a test"
    if c.verdict == TOO_FEW_SEEDS:
        return f"{head} {format_difference(c.metric, paired.mean_diff)}{unit} ({pairs}): {TOO_FEW_SEEDS} for a test"
    interval = (f"[{format_difference(c.metric, paired.ci_low, False)}, "
                f"{format_difference(c.metric, paired.ci_high, False)}]")
    line = (f"{head} {format_difference(c.metric, paired.mean_diff)}{unit} {interval}, "
            f"p_holm = {format_p(c.p_holm)}, {c.verdict} ({pairs}")
    if paired.test == ZERO_VARIANCE_TEST:
        line += "; every pair differs by the same amount, so p is the exact sign-flip test's"
    line += ")"
    if c.verdict == INDISTINGUISHABLE and c.seeds_needed is not None:
        line += (f"; about {c.seeds_needed} seeds would detect a difference this large "
                 f"with {POWER:.0%} power")
    return line


def comparison_method_text(comparisons: Sequence[Comparison], selectors: Sequence[tuple[str, str]]) -> str:
    tests = {c.metric: 0 for c in comparisons}
    for c in comparisons:
        tests[c.metric] += not math.isnan(c.paired.p_value)
    seeds = {}
    for c in comparisons:
        seeds.setdefault(c.group.label, c.paired.n_pairs)
    per_group = ", ".join(f"{label} {n}" for label, n in seeds.items())
    family = max(tests.values(), default=0)
    baseline = " ".join(f"{k}={v}" for k, v in selectors)
    return (
        f"Each group against its baseline ({baseline}, same other settings), runs paired by seed "
        f"(pairs per group: {per_group}). Difference = group − baseline, mean over pairs with its "
        f"{LEVEL:.0%} t-interval; p: two-sided paired t-test (scipy.stats.ttest_rel); p_holm: "
        f"Holm–Bonferroni over the {family} comparisons of each metric; higher/lower when "
        f"p_holm < {ALPHA}, else indistinguishable. Accuracy and accuracy gap in percentage points, "
        "NLL in nats, ECE and confidence as fractions. Seeds needed (for indistinguishable "
        f"differences): n = ((z_{{1-α/2}} + z_{{{POWER}}}) · sd / |mean diff|)², the normal "
        "approximation at the observed standard deviation of the paired differences (it "
        "underestimates what a t-test needs at a handful of seeds); where every pair differs by "
        "the same amount, the smallest n whose sign-flip p = 2·0.5^n is below 0.05 (6). Both are "
        "for one test at α = 0.05; Holm's adjustment over many comparisons needs more. "
        f"All numbers, with the probability of improvement, in {COMPARISONS_CSV}."
    )


# --- ranks across settings (datasets, models, ...) -------------------------------------------------

def present(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in settings.items() if value is not ABSENT}


@dataclass
class Ranking:
    metric: str
    higher_is_better: bool
    methods: list[str]
    blocks: list[str]
    scores: np.ndarray  # [block, method]: mean over completed seeds
    test: RankTest


def ranking_table(grouping: Grouping, metric: str) -> tuple[list[str], list[str], dict, list[str]]:
    """(methods, blocks, {(block, method): mean score}, notes). A block is one combination of the
    varying settings outside regularizer.*; a method is the regularizer with its parameters."""
    block_keys = [key for key in grouping.varying if not is_regularizer_key(key)]
    shown = label_keys([present(g.settings) for g in grouping.groups], grouping.varying)
    method_keys = [key for key in shown if is_regularizer_key(key)]
    table: dict[tuple[str, str], float] = {}
    methods: dict[str, None] = {}
    blocks: dict[str, None] = {}
    for group in grouping.groups:
        values = finite_values(group.completed, metric)
        method = make_label(group.settings.get("regularizer", full_settings(group).get("regularizer", "none")),
                            present(group.settings), method_keys)
        block = ", ".join(f"{key}={show(group.settings.get(key, ABSENT))}" for key in block_keys) or "all"
        methods.setdefault(method)
        blocks.setdefault(block)
        if values:
            table[(block, method)] = statistics.fmean(values)
    return list(methods), list(blocks), table, []


def build_ranking(grouping: Grouping, metric: str) -> tuple[Optional[Ranking], list[str]]:
    methods, blocks, table, notes = ranking_table(grouping, metric)
    if len(blocks) < 2:
        return None, [f"Ranks across settings: skipped, the sweep covers {len(blocks)} block "
                      "(combination of dataset, model and other non-regularizer settings); "
                      "they need at least 2."]
    complete = [m for m in methods if all((b, m) in table for b in blocks)]
    if missing := [m for m in methods if m not in complete]:
        notes.append(f"Left out of the ranks (no completed {metric} in every block): {', '.join(missing)}.")
    if len(complete) < 2:
        return None, notes + [f"Ranks across settings: skipped, fewer than 2 methods have {metric} in all "
                              f"{len(blocks)} blocks."]
    scores = np.array([[table[(b, m)] for m in complete] for b in blocks])
    higher = not lower_is_better(metric)
    return Ranking(metric, higher, complete, blocks, scores, rank_test(scores, higher)), notes


def ranking_lines(ranking: Ranking) -> list[str]:
    test = ranking.test
    order = sorted(range(len(ranking.methods)), key=lambda i: test.average_ranks[i])
    direction = "higher" if ranking.higher_is_better else "lower"
    lines = [
        f"- {test.n_methods} methods ranked within each of {test.n_blocks} blocks "
        f"({'; '.join(ranking.blocks)}) on the mean over seeds of {ranking.metric} "
        f"({direction} is better, rank 1 = best, ties share their average rank).",
        "- Average ranks: " + ", ".join(f"{ranking.methods[i]} {test.average_ranks[i]:.3f}" for i in order) + ".",
    ]
    if math.isnan(test.friedman_statistic):
        lines.append("- Friedman test: needs at least 3 methods; not run.")
    else:
        lines.append(f"- Friedman test (scipy.stats.friedmanchisquare): χ²_F = {test.friedman_statistic:.3f}, "
                     f"p = {format_p(test.friedman_p)}; Iman–Davenport F_F = {test.iman_davenport:.3f}.")
    lines.append(f"- Nemenyi critical difference at α = {ALPHA}: CD = q_α · sqrt(k(k+1)/(6N)) = "
                 f"{test.critical_difference:.3f} (Demšar 2006); average ranks further apart than CD "
                 f"differ; bars in {RANKS_PNG} join methods that do not.")
    return lines


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


# Per-run bootstrap intervals of the test metrics (test-split sampling uncertainty): low key,
# high key, column header. Shown (as mean width over seeds) only when metrics.json has them.
BOOTSTRAP_COLUMNS = (
    ("test/acc_ci_low", "test/acc_ci_high", "test acc CI width"),
    ("test/ece_ci_low", "test/ece_ci_high", "test ECE CI width"),
)


def interval_widths(jobs: Iterable[Job], low: str, high: str) -> list[float]:
    widths = [(metric_value(job, high), metric_value(job, low)) for job in jobs]
    return [h - l for h, l in widths if h is not None and l is not None]


def bootstrap_columns(jobs: Iterable[Job]) -> list[tuple[str, str, str]]:
    jobs = list(jobs)
    return [column for column in BOOTSTRAP_COLUMNS
            if any(metric_value(job, column[0]) is not None for job in jobs)]


def markdown_table(grouping: Grouping) -> str:
    intervals = bootstrap_columns(job for group in grouping.groups for job in group.completed)
    header = ["settings", "seeds", *(title for _, title, _ in TABLE_COLUMNS),
              *(title for _, _, title in intervals)]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" + "---:|" * (len(header) - 1)]
    for group in grouping.groups:
        done = group.completed
        cells = [markdown_cell(group.label), str(len(done))]
        cells += [format_mean_std(finite_values(done, key), spec, len(done))
                  for key, _, spec in TABLE_COLUMNS]
        for low, high, _ in intervals:
            widths = interval_widths(done, low, high)
            cells.append(f"{statistics.fmean(widths):.4f}" if widths else "–")
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


@dataclass
class Analysis:
    """What the report adds to the table: comparisons against the baseline and the ranking."""

    selectors: Sequence[tuple[str, str]] = DEFAULT_BASELINE
    comparisons: list[Comparison] = field(default_factory=list)
    comparison_notes: list[str] = field(default_factory=list)
    ranking: Optional[Ranking] = None
    ranking_notes: list[str] = field(default_factory=list)


def comparison_section(analysis: Analysis) -> list[str]:
    lines = [f"- {verdict_line(c)}" for c in analysis.comparisons]
    lines += [f"- {note}" for note in analysis.comparison_notes]
    parts = ["## Verdicts against the baseline"]
    if analysis.comparisons:
        parts.append(comparison_method_text(analysis.comparisons, analysis.selectors))
    parts.append("\n".join(lines) if lines else "No comparisons: only one group.")
    return parts


def ranking_section(analysis: Analysis) -> list[str]:
    lines = ranking_lines(analysis.ranking) if analysis.ranking else []
    lines += [f"- {note}" for note in analysis.ranking_notes]
    return ["## Ranks across settings", "\n".join(lines) or "- No ranking."]


def table_text(jobs: Sequence[Job], grouping: Grouping) -> str:
    text = (f"{len(jobs)} jobs: {status_counts(jobs)}. Each row is a group of runs that differ only "
            "in their seed: mean ± sample standard deviation over its completed seeds. TS: after "
            "temperature scaling fitted on the validation split; gap acc: train minus test accuracy.")
    if bootstrap_columns(job for group in grouping.groups for job in group.completed):
        text += (" CI width: the mean over seeds of each run's 95 % percentile-bootstrap interval "
                 "of the test metric (test examples resampled): wider than the ± spread over "
                 "seeds, the small test split dominates the uncertainty; narrower, the seeds do.")
    return text


def calibration_section(grouping: Grouping) -> list[str]:
    """Per group, every calibration metric raw and after each calibrator, and the ranking flips
    between ECE conventions; nothing when no run has the calibration panel's metrics."""
    table = calibration_table_markdown(grouping.groups)
    if not table:
        return []
    flips = ranking_flips(grouping.groups)
    flip_text = "\n".join(f"- {line}" for line in flips) if flips else \
        "No ranking flips: every ECE convention picks the same best-calibrated group."
    return ["## Calibration", "Mean ± std over seeds; raw is the softmax as trained, the other "
            "columns after a calibrator fitted on the validation split (README: What a run records).",
            table, flip_text]


def markdown_report(sweep: Path | Sequence[Path], jobs: Sequence[Job], grouping: Grouping,
                    analysis: Optional[Analysis] = None) -> str:
    sweeps = [sweep] if isinstance(sweep, Path) else list(sweep)
    analysis = analysis or Analysis()
    problems = problem_lines(jobs)
    title = (f"# Sweep {sweeps[0].resolve().name}" if len(sweeps) == 1 else
             "# Sweeps " + ", ".join(str(s) for s in sweeps))
    images = {**PLOT_FILES, "comparisons": COMPARISONS_PNG, "ranks": RANKS_PNG}
    parts = [
        title,
        *comparison_section(analysis),
        "## Groups",
        table_text(jobs, grouping),
        markdown_table(grouping),
        *ranking_section(analysis),
        *calibration_section(grouping),
        *probe_sections(grouping.groups),
        "## Runs that did not complete",
        "\n".join(problems) if problems else "None.",
        "## Plots",
        "\n".join(f"![{name}]({file})" for name, file in images.items()),
    ]
    return "\n\n".join(parts) + "\n"


# --- plots --------------------------------------------------------------------------------------

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


def scatter_points(grouping: Grouping, x_key: str, y_key: str = "test/acc") -> list[ScatterPoint]:
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
              (("test/ece", "raw softmax"), ("test/ece@temperature", "after temperature scaling"))]
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


CALIBRATION_KEYS = {"bin_edges", "bin_confidence", "bin_accuracy", "bin_count", "histogram_edges",
                    "histogram_correct", "histogram_incorrect"}


def calibration_files(group: Group) -> list[dict[str, Any]]:
    """The completed runs' test_calibration.json files (a missing or malformed one is skipped)."""
    summaries = []
    for job in group.completed:
        try:
            summary = RunFolder(job.folder).calibration()
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
    """Small multiples, one reliability diagram per group (bins pooled over its seeds), drawn as
    every run's own diagram (figures.draw_reliability: gaps coloured by direction, sparse bins
    faded, predictions per bin in the strip below); each title names the fewest predictions in a
    non-empty bin, so a curve pulled by a bin of 1 is recognised as such."""
    panels = []
    for group in grouping.groups:
        confidence, accuracy, counts = pool_reliability(calibration_files(group))
        if any(counts):
            panels.append((group, drawing_from_bins(confidence, accuracy, counts)))
    if not panels:
        return empty_figure(f"no {CALIBRATION_FILE} from completed runs yet")
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.3 * columns, 3.9 * rows + 0.8), dpi=100, layout="constrained")
    cells = figure.add_gridspec(rows, columns)
    for index, (group, drawing) in enumerate(panels):
        inner = cells[index // columns, index % columns].subgridspec(2, 1, height_ratios=(4, 1), hspace=0.05)
        axes = figure.add_subplot(inner[0])
        counts_axes = figure.add_subplot(inner[1], sharex=axes)
        draw_reliability(axes, counts_axes, drawing)
        done = group.completed
        eces = finite_values(done, "test/ece")
        ece = f", ECE {statistics.fmean(eces):.4f}" if eces else ""
        axes.set_title(f"{wrap(group.label)}\n{seeds_text(len(done))}{ece}, min bin "
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
    panels = [(group, pooled) for group in grouping.groups
              if (pooled := pooled_histograms(calibration_files(group)))]
    if not panels:
        return empty_figure(f"no {CALIBRATION_FILE} from completed runs yet")
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * rows + 0.8), dpi=100, layout="constrained")
    grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for axes in grid.flat[len(panels):]:
        axes.set_visible(False)
    for axes, (group, (edges, correct, incorrect)) in zip(grid.flat, panels):
        axes.stairs(correct, edges, color=CORRECT_COLOR, fill=True, alpha=0.35)
        axes.stairs(correct, edges, color=CORRECT_COLOR, linewidth=1.2, label="correct")
        axes.stairs(incorrect, edges, color=INCORRECT_COLOR, linewidth=1.6, label="incorrect")
        axes.set_yscale("log")
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
        axes.set_ylabel("test predictions (log)")
    figure.legend(handles=[Line2D([], [], color=CORRECT_COLOR, label="correct"),
                           Line2D([], [], color=INCORRECT_COLOR, label="incorrect")],
                  loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    figure.suptitle("test confidence, pooled over seeds")
    return figure


VERDICT_COLORS = {"higher": "tab:blue", "lower": "tab:orange", INDISTINGUISHABLE: "tab:gray",
                  TOO_FEW_SEEDS: "lightgray"}


def forest_plot(comparisons: Sequence[Comparison], baseline: str = "regularizer=none") -> Figure:
    """One panel per metric: each comparison's mean difference with its 95 % t-interval, the zero
    line marked, colored by verdict. Rows (one per group: each has one baseline) are the same in
    every panel; the baseline, implied by the group's settings, is named in the title."""
    if not comparisons:
        return empty_figure("no comparisons (no baseline group, or one group only)")
    metrics = list(dict.fromkeys(c.metric for c in comparisons))
    rows = list(dict.fromkeys((c.group.label, c.baseline.label) for c in comparisons))
    names = [wrap(group) for group, _ in rows]
    columns = min(3, len(metrics))
    grid_rows = math.ceil(len(metrics) / columns)
    height = max(2.2, 0.32 * len(rows) + 1.0)
    figure = Figure(figsize=(4.2 * columns + 2.5, height * grid_rows + 0.8), dpi=100, layout="constrained")
    grid = figure.subplots(grid_rows, columns, sharey=True, squeeze=False)
    for axes in grid.flat[len(metrics):]:
        axes.set_visible(False)
    position = {row: i for i, row in enumerate(rows)}
    for axes, metric in zip(grid.flat, metrics):
        scale = 100 if metric in PERCENT_METRICS else 1
        axes.axvline(0, color="black", linewidth=1)
        for c in (c for c in comparisons if c.metric == metric):
            y = position[(c.group.label, c.baseline.label)]
            mean = c.paired.mean_diff * scale
            color = VERDICT_COLORS.get(c.verdict, "tab:gray")
            if math.isnan(mean):
                continue
            if math.isnan(c.paired.ci_low):
                axes.plot(mean, y, "o", markerfacecolor="none", color=color)
            else:
                axes.errorbar(mean, y, xerr=[[mean - c.paired.ci_low * scale], [c.paired.ci_high * scale - mean]],
                              fmt="o", capsize=3, color=color)
        unit = " (pp)" if metric in PERCENT_METRICS else ""
        axes.set_title(f"{METRIC_NAMES.get(metric, metric)}{unit}", fontsize="medium")
        axes.grid(axis="x", alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(5))
        axes.set_yticks(range(len(rows)), names, fontsize="small")
        axes.set_ylim(len(rows) - 0.5, -0.5)
    for axes in grid[-1]:
        axes.set_xlabel("group − baseline")
    handles = [Line2D([], [], marker="o", linestyle="none", color=color, label=name)
               for name, color in VERDICT_COLORS.items()]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False,
                  fontsize="small")
    figure.suptitle(f"group − baseline ({baseline}, same other settings): mean over seed pairs, "
                    f"{LEVEL:.0%} t-interval; {seeds_text(max(c.paired.n_pairs for c in comparisons))} at most")
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
    """Every plot as a PNG in ``sweep``; returns them by file name (for the TensorBoard copy)."""
    analysis = analysis or Analysis()
    figures = {
        PLOT_FILES["accuracy_vs_ece"]: accuracy_vs_ece(grouping),
        PLOT_FILES["reliability"]: reliability(grouping),
        PLOT_FILES["confidence_hist"]: confidence_histograms(grouping),
        COMPARISONS_PNG: forest_plot(analysis.comparisons,
                                     " ".join(f"{k}={v}" for k, v in analysis.selectors)),
        RANKS_PNG: critical_difference_diagram(analysis.ranking, " ".join(analysis.ranking_notes)),
    }
    for name, figure in figures.items():
        figure.savefig(sweep / name)
    return figures


# --- the report in TensorBoard ------------------------------------------------------------------

# Under the sweep folder, so `tensorboard --logdir <sweep>` shows it as the run "report".
REPORT_EVENTS_DIR = "report"


def hparams_rows(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Each job's HParams row exactly as its run logged it (recording.hparams_values)."""
    from regbench.run.tensorboard import hparams_values

    rows = []
    for job in jobs:
        if job.settings is None:
            continue
        name = job.metrics.get("name")
        if not isinstance(name, str):
            try:
                name = RunFolder(job.folder).spec_json().get("name", job.name)
            except (OSError, ValueError):
                name = job.name
        rows.append(hparams_values(job.settings, job.seed, name))
    return rows


def write_sweep_hparams(sweep: Path, jobs: Sequence[Job]) -> Path:
    """The sweep's one HParams experiment summary (recording.hparams_experiment): its columns,
    every job's settings, varying ones marked. Replaces the event files of an earlier call."""
    return write_report_events(sweep, jobs, texts={}, figures={})


def write_report_events(sweep: Path, jobs: Sequence[Job], texts: Mapping[str, str],
                        figures: Mapping[str, Figure]) -> Path:
    """``<sweep>/report/``: one TensorBoard event file with the HParams experiment of the sweep,
    the report's markdown (Text tab: TensorBoard renders the tables) and its figures (Images
    tab). Older event files there are removed first: TensorBoard would show both, and uses only
    the first HParams experiment it finds."""
    from torch.utils.tensorboard import SummaryWriter

    from regbench.run.tensorboard import hparams_experiment

    folder = sweep / REPORT_EVENTS_DIR
    folder.mkdir(exist_ok=True)
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(folder))
    try:
        writer._get_file_writer().add_summary(hparams_experiment(hparams_rows(jobs)))
        for tag, text in texts.items():
            writer.add_text(tag, text, 0)
        for name, figure in figures.items():
            writer.add_figure(f"report/{Path(name).stem}", figure, 0, close=False)
    finally:
        writer.close()
    return folder


# --- entrypoint ---------------------------------------------------------------------------------

def load_sweeps(sweeps: Sequence[Path]) -> list[Job]:
    """The jobs of one or several sweep folders; with several, job names carry their folder."""
    unique = list({sweep.resolve(): sweep for sweep in sweeps}.values())
    jobs = []
    for sweep in unique:
        loaded = load_jobs(sweep)
        if len(unique) > 1:
            for job in loaded:
                job.name = str(sweep / job.name)
        jobs += loaded
    return jobs


def analyse(jobs: Sequence[Job], grouping: Grouping, baseline: Sequence[str] = (),
            rank_metric: str = "test/acc") -> Analysis:
    selectors = parse_selectors(baseline) if baseline else list(DEFAULT_BASELINE)
    if baseline:
        check_selectors(grouping, selectors)
    comparisons, comparison_notes = build_comparisons(jobs, grouping, selectors)
    ranking, ranking_notes = build_ranking(grouping, rank_metric)
    return Analysis(selectors, comparisons, comparison_notes, ranking, ranking_notes)


def make_report(sweep: Path | Sequence[Path], baseline: Sequence[str] = (),
                rank_metric: str = "test/acc") -> str:
    """Write every output into ``sweep`` (the first folder, with several); returns summary.md's
    text. ``baseline``: key=value selectors (default regularizer=none)."""
    sweeps = [sweep] if isinstance(sweep, Path) else list(sweep)
    jobs = load_sweeps(sweeps)
    grouping = group_jobs(jobs)
    analysis = analyse(jobs, grouping, baseline, rank_metric)
    out = sweeps[0]
    header, rows = csv_rows(jobs, grouping)
    write_csv(out / SUMMARY_CSV, header, rows)
    write_csv(out / COMPARISONS_CSV, list(COMPARISON_COLUMNS), comparison_rows(analysis.comparisons))
    text = markdown_report(sweeps, jobs, grouping, analysis)
    (out / SUMMARY_MD).write_text(text)
    figures = write_plots(out, grouping, analysis)
    write_probe_plots(out, grouping.groups)
    write_report_events(out, jobs, {"report/summary": text, "report/groups": markdown_table(grouping)},
                        figures)
    return text


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Summarize regbench sweeps: tables and plots with seeds grouped, every group "
                    "compared with a baseline group (paired by seed: t-test, Holm-adjusted p, "
                    "probability of improvement), and ranks across datasets/models.")
    parser.add_argument("sweep", type=Path, nargs="+",
                        help="one or more multirun folders (each holding one folder per job); "
                             "their jobs are pooled and every output is written to the FIRST folder")
    # One value per flag (repeat it for several): nargs="+" would swallow the sweep folders after it.
    parser.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                        help="the baseline group, as an override-style selector matched against "
                             "each group's settings; repeat for several (all must match; default: "
                             "regularizer=none); settings not named must equal the compared group's")
    parser.add_argument("--rank-metric", default="test/acc", metavar="KEY",
                        help="metrics.json key to rank methods on across blocks (default test/acc; "
                             "nll, ece, loss, gap and similar keys are ranked lower-is-better)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        text = make_report(args.sweep, args.baseline, args.rank_metric)
    except ReportError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(text, end="")
    outputs = ", ".join([SUMMARY_CSV, SUMMARY_MD, COMPARISONS_CSV, *PLOT_FILES.values(),
                         COMPARISONS_PNG, RANKS_PNG, f"{REPORT_EVENTS_DIR}/ (TensorBoard)"])
    print(f"\nwrote {outputs} in {args.sweep[0]}")
    print(f"see it:       tensorboard --logdir {args.sweep[0]}  (Text, Images, HParams tabs)")


if __name__ == "__main__":
    main()
