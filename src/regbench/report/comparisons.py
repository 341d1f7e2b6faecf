"""Every group against its baseline group, paired by seed, on each key metric.

The baseline is chosen by override-style selectors (``--baseline key=value``, default
``regularizer=none``) and must share every other varying setting with the group it is compared
with. Per metric, the paired statistics of statistics.py, Holm's adjustment over all comparisons of
that metric with Bonferroni-width intervals for the same family, the verdict, the seeds a t-test
would need, and its rows for comparisons.csv and its line for summary.md. The verdicts that include
the test split's own noise (split_noise.py) are attached to the same comparisons and shown beside,
and so is, for a metric given a margin (``--equivalence KEY=MARGIN``), whether the group is
equivalent to its baseline within it (TOST, statistics.equivalence; ``add_equivalence``).
"""

from __future__ import annotations

import contextlib
import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from regbench.evaluation.ood import SCORES
from regbench.report.groups import (
    ABSENT,
    Group,
    Grouping,
    did_not_learn,
    finite_values,
    format_number,
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
    EQUIVALENT,
    FEW_BOOTSTRAP_SEEDS,
    HIGHER,
    INDISTINGUISHABLE,
    LEVEL,
    LOW_POWER_PAIRS,
    LOWER,
    POWER,
    SEEDS_CAP,
    T_TEST,
    TOO_FEW_SEEDS,
    ZERO_VARIANCE_TEST,
    Equivalence,
    McNemar,
    PairedComparison,
    bonferroni_level,
    critical_t,
    equivalence,
    equivalence_verdict,
    holm,
    paired_comparison,
    probability_of_improvement,
    seeds_needed,
    sign_flip_seeds_needed,
    verdict,
    with_interval,
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
# Metrics with no better direction: a higher mean confidence is neither better nor worse.
NO_DIRECTION_METRICS = {TEST_MEAN_CONFIDENCE}
COMPARISON_COLUMNS = ("group", "baseline", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high",
                      "p_value", "p_holm", "prob_improvement", "verdict",
                      "seeds_needed", "sd_diff", "test", "dropped_seeds", "did_not_learn",
                      # The interval's level (Bonferroni over the metric's comparisons), the
                      # outcome by the metric's direction, and the verdicts that include the test
                      # split's noise (split_noise.py; empty where no test_logits.npz).
                      "ci_level", "outcome", "boot_pairs", "boot_ci_low", "boot_ci_high",
                      "boot_verdict", "mcnemar_group_only", "mcnemar_baseline_only", "mcnemar_p",
                      "mcnemar_p_holm", "mcnemar_verdict")
# With --equivalence only: the margin, the interval TOST inverts and its level, the one-sided
# p-values against −margin and +margin, the TOST p (their max) and after Holm, the verdict.
EQUIVALENCE_COLUMNS = ("tost_margin", "tost_ci_level", "tost_low", "tost_high", "tost_p_lower",
                       "tost_p_upper", "tost_p", "tost_p_holm", "tost_verdict")
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


def parse_margins(texts: Sequence[str]) -> dict[str, float]:
    """``["test/acc=0.003", "test/ece=0.005"]`` -> {metric: margin}, in the metric's own units;
    a malformed item, a key that is not a compared metric, a margin that is not a positive finite
    number or a key given twice is a ReportError (one line), before any folder is read."""
    margins: dict[str, float] = {}
    for text in texts:
        key, sep, value = (part.strip() for part in text.partition("="))
        if not sep or not key:
            raise ReportError(f"--equivalence {text!r} is not of the form KEY=MARGIN (for "
                              "example test/acc=0.003); the sweep folders go before "
                              "--equivalence or after --")
        if key not in METRIC_NAMES:
            close = difflib.get_close_matches(key, list(METRIC_NAMES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ReportError(f"--equivalence {text}: {key} is not a compared metric{hint}; they "
                              f"are {', '.join(METRIC_NAMES)}")
        try:
            margin = float(value)
        except ValueError:
            margin = math.nan
        if not (math.isfinite(margin) and margin > 0):
            raise ReportError(f"--equivalence {text}: the margin must be a positive finite number "
                              "in the metric's own units (test/acc=0.003 is 0.3 percentage points)")
        if key in margins:
            raise ReportError(f"--equivalence names {key} twice ({key}={margins[key]!r} and "
                              f"{text})")
        margins[key] = margin
    return margins


def recorded_metrics(jobs: Iterable[Job]) -> set[str]:
    """The metrics.json keys that hold a number in some job."""
    return {key for job in jobs for key, value in job.metrics.items() if is_number(value)}


def check_margins(jobs: Sequence[Job], margins: Mapping[str, float]) -> None:
    """An equivalence margin for a metric no run recorded is a user mistake: one line."""
    recorded = recorded_metrics(jobs)
    if missing := [key for key in margins if key not in recorded]:
        present = [key for key in METRIC_NAMES if key in recorded]
        raise ReportError(f"--equivalence {', '.join(missing)}: no run of these sweeps recorded "
                          f"{'it' if len(missing) == 1 else 'them'} (compared metrics here: "
                          f"{', '.join(present) or 'none'})")


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
class SplitNoise:
    """The verdicts that include the test split's own noise, from the runs' test_logits.npz
    (split_noise.py): the paired bootstrap over seeds and test examples, and McNemar's test when
    the comparison has one seed pair."""

    pairs: int        # seed pairs whose runs both have usable test logits
    examples: int     # test examples
    low: float        # percentile interval of group − baseline, at the comparison's ci_level
    high: float
    verdict: str      # higher / lower / indistinguishable: whether the interval excludes 0
    note: str = ""    # why pairs of the t-test are missing here
    mcnemar: Optional[McNemar] = None
    mcnemar_p_holm: float = math.nan
    mcnemar_verdict: str = ""


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
    seeds_needed: Optional[int] = None  # SEEDS_CAP + 1: more than SEEDS_CAP
    ci_level: float = LEVEL             # of paired's interval and the bootstrap's
    family: int = 0                     # tests in this metric's family (Holm's m)
    noise: Optional[SplitNoise] = None
    equivalence: Optional[Equivalence] = None  # with a margin for the metric (--equivalence)


def paired_values(group: Group, baseline: Group, metric: str) -> tuple[list[float], list[float]]:
    """The metric's values of same-seed (group run, baseline run) pairs where both recorded it."""
    pairs, _ = pair_runs(group, baseline)
    values = [(metric_value(ours, metric), metric_value(theirs, metric)) for ours, theirs in pairs]
    values = [(x, y) for x, y in values if x is not None and y is not None]
    return [x for x, _ in values], [y for _, y in values]


def compare(group: Group, baseline: Group, metric: str) -> Comparison:
    paired = paired_comparison(*paired_values(group, baseline, metric))
    improvement = probability_of_improvement(finite_values(group.completed, metric),
                                             finite_values(baseline.completed, metric))
    return Comparison(group, baseline, metric, paired, improvement, pair_runs(group, baseline)[1])


def judge(family: Sequence[Comparison]) -> None:
    """Holm's adjustment over one metric's comparisons, each interval at the Bonferroni level of
    the same family (statistics.bonferroni_level), then each one's verdict and, when it is
    indistinguishable, the seeds that would detect a difference that large at α/m, the level of
    Holm's strictest step, so enough whatever the other comparisons of the family give."""
    tests = sum(not math.isnan(c.paired.p_value) for c in family)
    level = bonferroni_level(tests)
    for comparison, adjusted in zip(family, holm([c.paired.p_value for c in family])):
        comparison.family, comparison.ci_level = tests, level
        comparison.paired = with_interval(comparison.paired, level)
        comparison.p_holm = adjusted
        comparison.verdict = verdict(comparison.paired, adjusted)
        if comparison.verdict == INDISTINGUISHABLE:
            comparison.seeds_needed = needed_seeds(comparison.paired, ALPHA / max(tests, 1))


def needed_seeds(paired: PairedComparison, alpha: float) -> Optional[int]:
    if paired.test == ZERO_VARIANCE_TEST:
        return sign_flip_seeds_needed(alpha, paired.n_pairs)
    return seeds_needed(paired.mean_diff, paired.sd_diff, paired.n_pairs, alpha)


def add_equivalence(comparisons: Sequence[Comparison], margins: Mapping[str, float]) -> None:
    """TOST (statistics.equivalence) for every comparison of a metric with a margin, after judge.
    Holm's adjustment runs over the TOST p-values of the same family as the differences' (the
    metric's comparisons with a test), each interval at 1 − 2α/m (Bonferroni): the error to
    control is a false claim of equivalence, and m comparisons each at α would make one likelier
    with every group added. With one comparison per metric (fp32 against bf16) nothing changes.
    "different" follows the difference's own Holm-adjusted verdict (higher or lower)."""
    for metric, margin in margins.items():
        family = [c for c in comparisons if c.metric == metric]
        results = [equivalence(*paired_values(c.group, c.baseline, metric), margin, ALPHA,
                               bonferroni_level(c.family, 2 * ALPHA)) for c in family]
        for c, result, adjusted in zip(family, results, holm([r.p_value for r in results])):
            result.p_holm = adjusted
            result.verdict = equivalence_verdict(result.n_pairs, adjusted, c.p_holm)
            c.equivalence = result


def build_comparisons(jobs: Sequence[Job], grouping: Grouping,
                      selectors: Sequence[tuple[str, str]]) -> tuple[list[Comparison], list[str]]:
    """Every (group, baseline) pair on every key metric some job recorded; Holm's adjustment runs
    over all comparisons of one metric, so 10 regularizers against none count as 10 tests."""
    pairs, notes = find_baselines(grouping, selectors)
    recorded = recorded_metrics(jobs)
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


# --- direction ------------------------------------------------------------------------------

def better_direction(metric: str) -> Optional[str]:
    """HIGHER or LOWER: which way the metric is better (spec.lower_is_better); None for a metric
    with no better direction (mean confidence)."""
    if metric in NO_DIRECTION_METRICS:
        return None
    return LOWER if lower_is_better(metric) else HIGHER


def outcome(metric: str, decided: str) -> str:
    """"better" / "worse" for a higher/lower verdict on a metric with a direction, else ""."""
    direction = better_direction(metric)
    if decided not in (HIGHER, LOWER) or direction is None:
        return ""
    return "better" if decided == direction else "worse"


# --- comparisons.csv and the verdict text ---------------------------------------------------------

def seeds_needed_cell(seeds: Optional[int]) -> Any:
    """comparisons.csv's seeds_needed: the number, ">1000" beyond the cap, "" when none."""
    if seeds is None:
        return ""
    return f">{SEEDS_CAP}" if seeds > SEEDS_CAP else seeds


def number(value: Optional[float]) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def noise_cells(c: Comparison) -> dict[str, Any]:
    noise, test = c.noise, c.noise.mcnemar if c.noise else None
    return {
        "boot_pairs": noise.pairs if noise else "",
        "boot_ci_low": number(noise.low) if noise else "",
        "boot_ci_high": number(noise.high) if noise else "",
        "boot_verdict": noise.verdict if noise else "",
        "mcnemar_group_only": test.group_only if test else "",
        "mcnemar_baseline_only": test.baseline_only if test else "",
        "mcnemar_p": test.p_value if test else "",
        "mcnemar_p_holm": number(noise.mcnemar_p_holm) if test else "",
        "mcnemar_verdict": noise.mcnemar_verdict if test else "",
    }


def equivalence_cells(e: Optional[Equivalence]) -> dict[str, Any]:
    """The EQUIVALENCE_COLUMNS of a row; empty for a metric without a margin."""
    if e is None:
        return dict.fromkeys(EQUIVALENCE_COLUMNS, "")
    return {
        "tost_margin": e.margin, "tost_ci_level": e.level if e.n_pairs >= 2 else "",
        "tost_low": number(e.ci_low), "tost_high": number(e.ci_high),
        "tost_p_lower": number(e.p_lower), "tost_p_upper": number(e.p_upper),
        "tost_p": number(e.p_value), "tost_p_holm": number(e.p_holm), "tost_verdict": e.verdict,
    }


def comparison_header(comparisons: Sequence[Comparison]) -> list[str]:
    """comparisons.csv's columns: the equivalence ones only when some metric has a margin."""
    with_margin = any(c.equivalence is not None for c in comparisons)
    return [*COMPARISON_COLUMNS, *(EQUIVALENCE_COLUMNS if with_margin else ())]


def comparison_rows(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """comparisons.csv rows (comparison_header's columns): full-precision numbers, empty cells for
    what was not computed."""
    with_margin = any(c.equivalence is not None for c in comparisons)
    return [{
        "group": c.group.label, "baseline": c.baseline.label, "metric": c.metric,
        "n_pairs": c.paired.n_pairs, "mean_diff": number(c.paired.mean_diff),
        "ci_low": number(c.paired.ci_low), "ci_high": number(c.paired.ci_high),
        "p_value": number(c.paired.p_value), "p_holm": number(c.p_holm),
        "prob_improvement": number(c.prob_improvement), "verdict": c.verdict,
        "seeds_needed": seeds_needed_cell(c.seeds_needed), "sd_diff": number(c.paired.sd_diff),
        "test": c.paired.test, "dropped_seeds": c.dropped_seeds, "did_not_learn": learning_warning(c),
        "ci_level": c.ci_level if c.family else "", "outcome": outcome(c.metric, c.verdict),
        **noise_cells(c), **(equivalence_cells(c.equivalence) if with_margin else {}),
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
    """Accuracy-like metrics in percentage points, the others in their own units; a nonzero
    difference below the display precision as "< 0.0001" or "> -0.0001" (groups.format_number)."""
    if metric in PERCENT_METRICS:
        return format_number(100 * value, f"{'+' if sign else ''}.2f")
    return format_number(value, f"{'+' if sign else ''}.4f")


def format_level(level: float) -> str:
    """"95 %", "98.3 %" (1 − 0.05/3), "99.2 %" (1 − 0.05/6): one decimal, none when it is 0."""
    text = f"{100 * level:.1f}".removesuffix(".0")
    return f"{text} %"


def interval_text(metric: str, low: float, high: float, level: float, unit: str = "") -> str:
    """"[0.35, 1.47] pp", with its level when it is not the usual 95 %."""
    ends = (format_difference(metric, low, False), format_difference(metric, high, False))
    text = f"[{ends[0]}, {ends[1]}]{unit}"
    return text if math.isclose(level, LEVEL) else f"{text} ({format_level(level)})"


def interval_or_none(metric: str, low: float, high: float, level: float, pairs: int) -> str:
    """interval_text, or why there is none: equal differences on too few pairs to bound it."""
    if math.isnan(low):
        return f"(no finite {format_level(level)} interval from {pairs} equal pairs)"
    return interval_text(metric, low, high, level)


def verdict_line(c: Comparison) -> str:
    """"label_smoothing vs none: test accuracy +0.91 pp [0.35, 1.47], p_holm = 0.012, higher,
    better (4 pairs)", then the verdicts with the test split's noise and the seeds needed."""
    name = METRIC_NAMES.get(c.metric, c.metric)
    unit = " pp" if c.metric in PERCENT_METRICS else ""
    head = f"{c.group.label} vs {c.baseline.label}: {name}"
    warning = f" ⚠ {learning}" if (learning := learning_warning(c)) else ""
    return (verdict_text(c, head, unit) + noise_text(c, unit) + seeds_text(c)
            + equivalence_text(c, unit) + warning)


def pairs_text(paired: PairedComparison, alpha: float) -> str:
    """"4 pairs", with what a t-test on 2 or 3 pairs can do, or why p is a sign-flip test's."""
    pairs = f"{paired.n_pairs} pair" + ("" if paired.n_pairs == 1 else "s")
    if paired.test == T_TEST and paired.n_pairs in LOW_POWER_PAIRS:
        df = paired.n_pairs - 1
        pairs += (f": a t-test with {df} degree{'' if df == 1 else 's'} of freedom has little "
                  f"power, |t| must exceed {critical_t(paired.n_pairs, alpha):.2f} at "
                  f"α = {alpha:.3g}")
    if paired.test == ZERO_VARIANCE_TEST:
        pairs += "; every pair differs by the same amount, so p is the exact sign-flip test's"
    return pairs


def verdict_text(c: Comparison, head: str, unit: str) -> str:
    """The difference, its interval, p and the verdict, after ``head`` (group vs baseline: metric)."""
    paired = c.paired
    if paired.n_pairs == 0:
        return f"{head}: no seed completed on both sides, {TOO_FEW_SEEDS} for a test"
    difference = f"{format_difference(c.metric, paired.mean_diff)}{unit}"
    if c.verdict == TOO_FEW_SEEDS:
        return f"{head} {difference} ({pairs_text(paired, ALPHA)}): {TOO_FEW_SEEDS} for a test"
    interval = interval_or_none(c.metric, paired.ci_low, paired.ci_high, c.ci_level,
                                paired.n_pairs)
    better = f", {result}" if (result := outcome(c.metric, c.verdict)) else ""
    alpha = ALPHA / max(c.family, 1)
    return (f"{head} {difference} {interval}, p_holm = {format_p(c.p_holm)}, {c.verdict}{better} "
            f"({pairs_text(paired, alpha)})")


def noise_text(c: Comparison, unit: str) -> str:
    """"; seeds and test examples resampled: [-0.90, 1.70] pp, indistinguishable", and McNemar's
    test for one seed pair."""
    noise = c.noise
    if noise is None:
        return ""
    what = "seeds and test examples" if noise.pairs > 1 else "test examples"
    better = f", {result}" if (result := outcome(c.metric, noise.verdict)) else ""
    text = (f"; {what} resampled: "
            f"{interval_text(c.metric, noise.low, noise.high, c.ci_level, unit)}, "
            f"{noise.verdict}{better}")
    caveats = [noise.note] if noise.note else []
    if 1 < noise.pairs <= FEW_BOOTSTRAP_SEEDS:
        caveats.append(f"{noise.pairs} seed pairs: too few to resample well, the seed spread "
                       "is understated")
    if caveats:
        text += f" ({'; '.join(caveats)})"
    if test := noise.mcnemar:
        better = f", {result}" if (result := outcome(c.metric, noise.mcnemar_verdict)) else ""
        text += (f"; McNemar on the {noise.examples} test examples: {test.group_only} right only "
                 f"in {c.group.label}, {test.baseline_only} only in {c.baseline.label}, p_holm = "
                 f"{format_p(noise.mcnemar_p_holm)}, {noise.mcnemar_verdict}{better}")
    return text


def equivalence_word(c: Comparison, unit: str) -> str:
    """"equivalent within ±0.30 pp", "not shown equivalent", "different", "too few seeds"."""
    e = c.equivalence
    if e is None:
        return ""
    if e.verdict != EQUIVALENT:
        return e.verdict
    return f"{EQUIVALENT} within ±{format_difference(c.metric, e.margin, False)}{unit}"


def equivalence_text(c: Comparison, unit: str) -> str:
    """"; TOST at ±0.30 pp: [-0.12, 0.20] (90 %), p_holm = 0.0031, equivalent within ±0.30 pp"."""
    e = c.equivalence
    if e is None:
        return ""
    head = f"; TOST at ±{format_difference(c.metric, e.margin, False)}{unit}"
    if e.verdict == TOO_FEW_SEEDS:
        return f"{head}: {TOO_FEW_SEEDS} for a test"
    interval = interval_or_none(c.metric, e.ci_low, e.ci_high, e.level, e.n_pairs)
    return f"{head}: {interval}, p_holm = {format_p(e.p_holm)}, {equivalence_word(c, unit)}"


def seeds_text(c: Comparison) -> str:
    """How many seeds would detect a difference this large, for an indistinguishable one."""
    if c.verdict != INDISTINGUISHABLE or c.seeds_needed is None:
        return ""
    level = f" at α = {ALPHA}/{c.family}" if c.family > 1 else ""
    if c.seeds_needed > SEEDS_CAP:
        return (f"; more than {SEEDS_CAP} seeds would be needed to detect a difference this "
                f"large with {POWER:.0%} power{level}: it is negligible next to its spread over "
                "seeds")
    return (f"; about {c.seeds_needed} seeds would detect a difference this large with "
            f"{POWER:.0%} power{level}")


# --- the method paragraph ------------------------------------------------------------------------

def family_sizes(comparisons: Sequence[Comparison]) -> dict[str, int]:
    """Holm's m (comparisons with a test) per metric, in the comparisons' order."""
    return {c.metric: c.family for c in comparisons}


def family_text(sizes: dict[str, int]) -> str:
    """Whom Holm's adjustment runs over, in words that fit 0, 1 or many comparisons."""
    distinct = set(sizes.values())
    if distinct == {0}:
        return "no test ran (fewer than 2 seed pairs in every comparison)"
    if distinct == {1}:
        return "one comparison per metric, so it changes nothing"
    if len(distinct) == 1:
        return f"the {distinct.pop()} comparisons of each metric"
    return "each metric's comparisons (" + ", ".join(
        f"{METRIC_NAMES.get(metric, metric)} {m}" for metric, m in sizes.items()) + ")"


def level_text(sizes: dict[str, int]) -> str:
    """The intervals' levels and why they are what they are."""
    levels = sorted({bonferroni_level(m) for m in sizes.values()})
    if levels == [LEVEL]:
        return f"{format_level(LEVEL)} intervals (one comparison per metric: nothing to adjust)"
    shown = ", ".join(format_level(level) for level in levels)
    return (f"intervals at the Bonferroni level 1 − {ALPHA}/m (Dunn 1961), m = the metric's "
            f"comparisons with a test ({shown}), so that all of a metric's intervals hold together "
            f"with {format_level(LEVEL)} probability, as Holm's p-values control its family's "
            "error (Holm-adjusted intervals are not standard). An interval that excludes 0 always "
            f"comes with p_holm < {ALPHA}; Holm's later steps test at looser levels than "
            f"{ALPHA}/m, so a higher or lower verdict can have an interval that touches 0")


def comparison_method_text(comparisons: Sequence[Comparison], selectors: Sequence[tuple[str, str]]) -> str:
    seeds = {}
    for c in comparisons:
        seeds.setdefault(c.group.label, c.paired.n_pairs)
    per_group = ", ".join(f"{label} {n}" for label, n in seeds.items())
    sizes = family_sizes(comparisons)
    baseline = " ".join(f"{k}={v}" for k, v in selectors)
    text = (
        f"Each group against its baseline ({baseline}, same other settings), runs paired by seed "
        f"(pairs per group: {per_group}). Difference = group − baseline, mean over pairs. "
        "**Seed-paired t-test** (scipy.stats.ttest_rel on each run's metrics.json): it covers the "
        "spread between seeds (training randomness) on this one test split. p_holm: "
        f"Holm–Bonferroni over {family_text(sizes)}; higher/lower when p_holm < {ALPHA}, else "
        "indistinguishable; better or worse by the metric's direction (mean confidence has none). "
        f"{level_text(sizes)[0].upper()}{level_text(sizes)[1:]}. With {LOW_POWER_PAIRS[0]} or "
        f"{LOW_POWER_PAIRS[-1]} pairs the t-test has 1 or 2 degrees of freedom and little power; "
        "the verdict says so. Accuracies and accuracy gap in percentage points, NLL in nats, ECE, "
        "confidence, AUROC and FPR95 as fractions. Seeds needed (for indistinguishable "
        f"differences): the fewest pairs with which the paired t-test at α = {ALPHA}/m (Holm's "
        f"strictest step) detects the mean difference seen with {POWER:.0%} power if the "
        "paired differences keep their standard deviation, from the noncentral t "
        f"(scipy.stats.nct), never fewer than the pairs run, \"more than {SEEDS_CAP}\" where "
        "the difference is negligible next to its spread; where every pair differs by the same "
        f"amount, the smallest n whose exact sign-flip p = 2·0.5^n is below {ALPHA}/m (6 for "
        f"m = 1). All numbers, with the probability of improvement, in {COMPARISONS_CSV}.")
    return text + equivalence_method_text(comparisons) + noise_method_text(comparisons)


def equivalence_method_text(comparisons: Sequence[Comparison]) -> str:
    """What the TOST verdicts are, when some metric has a margin (--equivalence)."""
    if not any(c.equivalence is not None for c in comparisons):
        return ""
    margins = {c.metric: c.equivalence.margin for c in comparisons if c.equivalence is not None}
    listed = ", ".join(f"{METRIC_NAMES.get(metric, metric)} ±{margin!r}"
                       for metric, margin in margins.items())
    return (
        f" **Equivalence** (--equivalence; margins in the metric's own units: {listed}): two "
        "one-sided paired t-tests (TOST, Schuirmann 1987; scipy.stats.ttest_1samp) of H0 mean "
        "difference ≤ −margin and H0 ≥ +margin; the TOST p is the larger one, Holm-adjusted over "
        "the same comparisons as the differences' p (a false claim of equivalence is the error "
        f"it guards against). Equivalent within ±margin when that p_holm < {ALPHA}, the same as "
        f"the 1 − 2·{ALPHA}/m interval (90 % for one comparison) lying inside (−margin, "
        "+margin); otherwise different when the difference's own verdict is higher or lower; "
        "otherwise not shown equivalent. Equal differences on every pair use the exact sign-flip "
        "test, 0.5^n on each side.")


def noise_method_text(comparisons: Sequence[Comparison]) -> str:
    """What the verdicts with the test split's noise are and cover, when some comparison has one."""
    # Imported here: split_noise reads the runs' logits with ensembles.py, which imports this
    # module.
    from regbench.report.split_noise import method_text

    if not any(c.noise is not None for c in comparisons):
        return ""
    return "\n\n" + method_text(any(c.noise is not None and c.noise.mcnemar for c in comparisons))
