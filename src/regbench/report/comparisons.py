"""Every group against its baseline group, paired by seed, on each key metric.

The baseline is chosen by override-style selectors (``--baseline key=value``, default
``regularizer=none``) and must share every other varying setting with the group it is compared
with. Per metric, the paired statistics of statistics.py, Holm's adjustment over all comparisons of
that metric, the verdict, and its rows for comparisons.csv and its line for summary.md.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import yaml

from regbench.evaluation.ood import SCORES
from regbench.report.groups import (
    ABSENT,
    Group,
    Grouping,
    did_not_learn,
    finite_values,
    full_settings,
    is_number,
    is_regularizer_key,
    label_keys,
    metric_value,
    show,
)
from regbench.report.jobs import Job, ReportError
from regbench.report.outputs import COMPARISONS_CSV
from regbench.report.statistics import (
    ALPHA,
    INDISTINGUISHABLE,
    LEVEL,
    POWER,
    TOO_FEW_SEEDS,
    ZERO_VARIANCE_TEST,
    PairedComparison,
    holm,
    paired_comparison,
    probability_of_improvement,
    seeds_needed,
    sign_flip_seeds_needed,
    verdict,
)
from regbench.run.spec import (
    BASELINE,
    GAP_ACC,
    REGULARIZER_KEY,
    SHIFT_ACC,
    SHIFT_ECE,
    SHIFT_ECE_TEMPERATURE,
    SHIFT_NLL,
    TEST_ACC,
    TEST_ECE,
    TEST_ECE_TEMPERATURE,
    TEST_MEAN_CONFIDENCE,
    TEST_NLL,
    canonical,
    lower_is_better,
    ood_mean_key,
    severity_key,
)

def ood_metric_name(metric: str, score: str) -> str:
    """"OOD FPR95 of msp (lower is better)": the direction, which the metric's name alone does
    not say, from spec.lower_is_better."""
    direction = "lower" if lower_is_better(ood_mean_key(metric, score)) else "higher"
    return f"OOD {metric.upper()} of {score} ({direction} is better)"


# The metrics every group is compared on: metrics.json key, name in sentences, whether it is a
# fraction shown in percentage points.
KEY_METRICS = (
    (TEST_ACC, "test accuracy", True),
    (TEST_NLL, "test NLL", False),
    (TEST_ECE, "test ECE", False),
    (TEST_ECE_TEMPERATURE, "test ECE after temperature scaling", False),
    (TEST_MEAN_CONFIDENCE, "mean confidence", False),
    (GAP_ACC, "accuracy gap", True),
    # Corruption shift (evaluation.shift): means over every corruption and severity, and the
    # worst severity, where Ovadia et al. 2019 saw calibration degrade most.
    (SHIFT_ACC, "accuracy under corruption", True),
    (SHIFT_NLL, "NLL under corruption", False),
    (SHIFT_ECE, "ECE under corruption", False),
    (SHIFT_ECE_TEMPERATURE, "ECE under corruption after temperature scaling", False),
    (severity_key("ece", 5), "ECE at corruption severity 5", False),
    # OOD detection (evaluation.ood): AUROC and FPR95 of each score, means over the OOD sets.
    *((ood_mean_key(metric, score), ood_metric_name(metric, score), False)
      for metric in ("auroc", "fpr95") for score in SCORES),
)
METRIC_NAMES = {key: name for key, name, _ in KEY_METRICS}
PERCENT_METRICS = {key for key, _, percent in KEY_METRICS if percent}
COMPARISON_COLUMNS = ("group", "baseline", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high",
                      "p_value", "p_holm", "prob_improvement", "verdict",
                      "seeds_needed", "sd_diff", "test", "dropped_seeds", "did_not_learn")
DEFAULT_BASELINE = ((REGULARIZER_KEY, BASELINE),)


# --- selectors and baselines --------------------------------------------------------------------

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
    if key == REGULARIZER_KEY and isinstance(parsed, list):
        parsed = "+".join(sorted(map(str, parsed))) or BASELINE
    if is_number(value) and isinstance(parsed, str):
        with contextlib.suppress(ValueError):
            parsed = float(parsed)  # YAML 1.1 reads 1e-4 as a string
    if is_number(value) and is_number(parsed):
        return math.isclose(float(value), float(parsed), rel_tol=1e-12)
    return canonical(parsed) == canonical(value)


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
    if len(grouping.groups) > 1 and all(group_matches(group, selectors) for group in grouping.groups):
        raise ReportError(f"--baseline {matches_every_group(grouping, selectors)}")


def matches_every_group(grouping: Grouping, selectors: Sequence[tuple[str, str]]) -> str:
    """Why a selector that matches every group compares nothing, and what it should match."""
    named = {key for key, _ in selectors}
    free = label_keys([full_settings(group) for group in grouping.groups],
                      [key for key in grouping.varying if key not in named])
    example = next((f"{key}={show(group.settings[key])}" for key in free for group in grouping.groups
                    if group.settings[key] is not ABSENT), "")
    return (f"{' '.join(f'{k}={v}' for k, v in selectors)} matches all {len(grouping.groups)} "
            f"groups ({'; '.join(group.label for group in grouping.groups)}), so no group is left "
            "to compare with it: a baseline selector names a value of a setting that varies "
            f"({', '.join(free)}), matching one group of each set that differs only in it"
            + (f", e.g. --baseline {example}" if example else ""))


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
    if len(candidates) == len(grouping.groups) > 1:
        return [], [f"No comparisons: the baseline {matches_every_group(grouping, selectors)}."]
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


# --- pairing by seed and the comparisons ---------------------------------------------------------

def runs_by_seed(jobs: Iterable[Job]) -> dict[Any, Job]:
    """Completed runs by seed (one per seed: duplicates.py merged a run found twice)."""
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


def judge(family: Sequence[Comparison]) -> None:
    """Holm's adjustment over one metric's comparisons, then each one's verdict and, when it is
    indistinguishable, the seeds that would detect a difference that large."""
    for comparison, adjusted in zip(family, holm([c.paired.p_value for c in family])):
        comparison.p_holm = adjusted
        comparison.verdict = verdict(comparison.paired, adjusted)
        if comparison.verdict == INDISTINGUISHABLE:
            comparison.seeds_needed = (
                sign_flip_seeds_needed() if comparison.paired.test == ZERO_VARIANCE_TEST
                else seeds_needed(comparison.paired.mean_diff, comparison.paired.sd_diff))


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
        judge(family)
        comparisons += family
    for group, baseline in pairs:
        if dropped := pair_runs(group, baseline)[1]:
            notes.append(f"{group.label} vs {baseline.label}: dropped {dropped}.")
    return comparisons, notes


# --- comparisons.csv and the verdict text ---------------------------------------------------------

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
        "test": c.paired.test, "dropped_seeds": c.dropped_seeds, "did_not_learn": learning_warning(c),
    } for c in comparisons]


def learning_warning(c: Comparison) -> str:
    """"dropout: 3/5 runs did not learn" for either side with runs that did not learn."""
    return "; ".join(f"{group.label}: {warning}" for group in (c.group, c.baseline)
                     if (warning := did_not_learn(group)))


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
    warning = f" ⚠ {learning}" if (learning := learning_warning(c)) else ""
    return verdict_text(c, head, unit) + warning


def verdict_text(c: Comparison, head: str, unit: str) -> str:
    """The difference, its interval, p and the verdict, after ``head`` (group vs baseline: metric)."""
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
        f"p_holm < {ALPHA}, else indistinguishable. Accuracies and accuracy gap in percentage points, "
        "NLL in nats, ECE, confidence, AUROC and FPR95 as fractions. Seeds needed (for indistinguishable "
        f"differences): n = ((z_{{1-α/2}} + z_{{{POWER}}}) · sd / |mean diff|)², the normal "
        "approximation at the observed standard deviation of the paired differences (it "
        "underestimates what a t-test needs at a handful of seeds); where every pair differs by "
        "the same amount, the smallest n whose sign-flip p = 2·0.5^n is below 0.05 (6). Both are "
        "for one test at α = 0.05; Holm's adjustment over many comparisons needs more. "
        f"All numbers, with the probability of improvement, in {COMPARISONS_CSV}."
    )
