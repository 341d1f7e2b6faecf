"""The ensemble of the seeds: per group, the mean of its completed runs' softmax probabilities on
the test split (a deep ensemble, Lakshminarayanan et al. 2017: uniform weights, probabilities and
not logits averaged), read from each run's test_logits.npz (``spec.TEST_LOGITS_FILE``).

- **Members**: the group's completed runs whose test_logits.npz is readable and whose test labels
  are those most of them share (the first run's on a tie); any other is skipped and named. A group
  with fewer than ``MIN_MEMBERS`` members has no ensemble (a note says so).
- **Metrics**, of the ensemble and of every member alike, in float64 from the float32 logits:
  accuracy (``calibration_errors.top_label``), NLL, ECE (``calibration_errors``, the runs' 15
  bins) and Brier (``metrics.brier_score``). The ensemble's NLL is that of the mixture,
  −log((1/M) Σ_m p_m(y)) = −(logsumexp_m log p_m(y) − log M), not the members' mean NLL.
- **Intervals**: ``percentile_bootstrap`` over test examples, for the ensemble's four metrics and
  for the paired difference between a single model and the baseline group's ensemble.
- **Single model against the unregularized ensemble**: for each non-baseline group (baselines as
  the comparisons choose them: ``--baseline``, default regularizer=none, same other settings),
  how many of its members beat its baseline group's ensemble on test accuracy and on test NLL.
"""

from __future__ import annotations

import math
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from regbench.config import one_line
from regbench.evaluation import LEVEL
from regbench.evaluation.calibration_errors import (
    CALIBRATION_BINS,
    equal_width_bins,
    expected_calibration_error,
    top_label,
)
from regbench.evaluation.metrics import brier_score
from regbench.report.comparisons import PERCENT_METRICS, find_baselines, format_difference
from regbench.report.groups import Group, Grouping
from regbench.report.jobs import Job
from regbench.report.outputs import ENSEMBLES_CSV
from regbench.run.folder import RunFolder
from regbench.run.spec import TEST_ACC, TEST_BRIER, TEST_ECE, TEST_LOGITS_FILE, TEST_NLL

ENSEMBLE_METRICS = (TEST_ACC, TEST_NLL, TEST_ECE, TEST_BRIER)
METRIC_TITLES = {TEST_ACC: "test acc", TEST_NLL: "test NLL", TEST_ECE: "test ECE",
                 TEST_BRIER: "test Brier"}
# Compared with the unregularized ensemble: test accuracy (higher is better) and NLL (lower).
VERSUS_METRICS = ((TEST_ACC, "test accuracy", True), (TEST_NLL, "test NLL", False))
MIN_MEMBERS = 2  # an ensemble of one run is that run
# As the runs' own intervals (evaluation/metrics.bootstrap_intervals): 1000 percentile resamples.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed, so the same sweep gives the same intervals
BOOTSTRAP_BATCH = 100  # resamples drawn at a time: memory 100 x N indices, not 1000 x N
ENSEMBLE_COLUMNS = ("settings", "members", *(f"ensemble/{key}" for key in ENSEMBLE_METRICS),
                    *(f"members/{key}" for key in ENSEMBLE_METRICS),
                    *(f"ensemble/{key}_ci_{end}" for key in ENSEMBLE_METRICS for end in ("low", "high")),
                    "member_seeds", "skipped")


# --- the bootstrap ---------------------------------------------------------------------------------

def percentile_bootstrap(statistic: Callable[[np.ndarray], np.ndarray], examples: int,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                         level: float = LEVEL, batch: int = BOOTSTRAP_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the ``level`` percentile-bootstrap interval of each statistic:
    ``statistic(index)`` maps resampled example indices [B, examples] to values [S, B].

    The draws (``default_rng(seed).integers`` in batches) and the quantiles (``np.percentile``,
    linear) are those of ``scipy.stats.bootstrap(method="percentile", rng=default_rng(seed))``
    (tests check the two equal). Written out rather than called because scipy's seeding keyword
    is ``rng`` only from scipy 1.15 (regbench does not pin scipy), and scipy's default, BCa,
    needs a jackknife of N statistic evaluations on N − 1 examples each (N = 10,000 on CIFAR)
    whose acceleration estimate is unreliable for a binned, non-smooth statistic such as ECE;
    the percentile interval is also what the runs record (test/acc_ci_low, ...)."""
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, examples, (min(batch, resamples - start), examples)))
              for start in range(0, resamples, batch)]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.concatenate(values, axis=-1), [tail, 100 - tail], axis=-1)
    return low, high


@dataclass
class ExampleTerms:
    """Per test example, what the four metrics average: correct (0/1), −log p(y), Brier's
    Σ_k (p_k − onehot_k)², and the ECE's bin and correct − confidence (ECE = Σ_bins |Σ of the
    bin's correct − confidence| / N, as in calibration_errors)."""

    correct: np.ndarray
    nll: np.ndarray
    brier: np.ndarray
    ece_bin: np.ndarray
    ece_gap: np.ndarray

    def metrics(self, index: np.ndarray) -> np.ndarray:
        """The four metrics (ENSEMBLE_METRICS order) of each resample ``index`` [B, N] -> [4, B]."""
        size, examples = index.shape
        keys = (np.arange(size)[:, None] * CALIBRATION_BINS + self.ece_bin[index]).ravel()
        per_bin = np.bincount(keys, weights=self.ece_gap[index].ravel(),
                              minlength=size * CALIBRATION_BINS).reshape(size, CALIBRATION_BINS)
        return np.stack([self.correct[index].mean(axis=1), self.nll[index].mean(axis=1),
                         np.abs(per_bin).sum(axis=1) / examples, self.brier[index].mean(axis=1)])


def example_terms(probabilities: torch.Tensor, nll: torch.Tensor, labels: torch.Tensor) -> ExampleTerms:
    confidence, correct = top_label(probabilities, labels)
    onehot = torch.nn.functional.one_hot(labels, probabilities.shape[1]).to(probabilities.dtype)
    return ExampleTerms(correct.double().numpy(), nll.numpy(),
                        (probabilities - onehot).pow(2).sum(dim=1).numpy(),
                        equal_width_bins(confidence).numpy(), (correct.double() - confidence).numpy())


def point_metrics(probabilities: torch.Tensor, nll: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The four metrics by regbench's own functions (the bootstrap's ExampleTerms agree)."""
    _, correct = top_label(probabilities, labels)
    return {TEST_ACC: correct.double().mean().item(), TEST_NLL: nll.mean().item(),
            TEST_ECE: expected_calibration_error(probabilities, labels),
            TEST_BRIER: brier_score(probabilities, labels).item()}


# --- members -----------------------------------------------------------------------------------------

@dataclass
class Member:
    """One completed run's test predictions."""

    job: Job
    logits: np.ndarray  # float32 [N, K]
    labels: np.ndarray  # int64 [N]

    @property
    def log_probabilities(self) -> torch.Tensor:
        return torch.from_numpy(self.logits).double().log_softmax(dim=1)


def logits_problem(logits: np.ndarray, labels: np.ndarray) -> str:
    """Why arrays are not the agreed test_logits.npz (float [N, K] logits, integer [N] labels in
    [0, K)), or ""."""
    if logits.ndim != 2 or labels.ndim != 1 or len(labels) != len(logits) or not len(labels):
        return f"logits {logits.shape} and labels {labels.shape} are not [N, K] and [N], N > 0"
    if logits.dtype.kind != "f" or labels.dtype.kind not in "iu":
        return f"logits are {logits.dtype} and labels {labels.dtype}, not float and integer"
    if not np.isfinite(logits).all():
        return "its logits are not all finite"
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        return f"its labels are not all in [0, {logits.shape[1]})"
    return ""


def read_member(job: Job) -> tuple[Optional[Member], str]:
    """(the run's predictions, "") or (None, why they cannot be used)."""
    path = RunFolder(job.folder).file(TEST_LOGITS_FILE)
    if not path.is_file():
        return None, f"{path} is missing (a run of a regbench older than {TEST_LOGITS_FILE})"
    try:
        with np.load(path, allow_pickle=False) as arrays:
            logits, labels = arrays["logits"], arrays["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        return None, f"{path} cannot be read ({one_line(error)})"
    if problem := logits_problem(logits, labels):
        return None, f"{path}: {problem}"
    return Member(job, logits.astype(np.float32), labels.astype(np.int64)), ""


def same_predictions_of(members: Sequence[Member]) -> tuple[list[Member], list[str]]:
    """The members whose labels (and number of classes) most members share, the first member's
    on a tie, and a line for each other one, naming its folder."""
    def signature(member: Member) -> tuple:
        return member.logits.shape, member.labels.tobytes()

    counts = Counter(signature(member) for member in members)
    common = max(counts, key=lambda key: counts[key])  # first seen wins a tie (insertion order)
    reference = next(member for member in members if signature(member) == common)
    kept = [member for member in members if signature(member) == common]
    skipped = [f"{member.job.folder}: {difference(member, reference)}, skipped"
               for member in members if signature(member) != common]
    return kept, skipped


def difference(member: Member, reference: Member) -> str:
    if member.logits.shape != reference.logits.shape:
        return (f"its test logits are {list(member.logits.shape)}, the other members' "
                f"{list(reference.logits.shape)}")
    first = int(np.flatnonzero(member.labels != reference.labels)[0])
    return (f"its test labels differ from the other members' (first at example {first}: "
            f"{member.labels[first]} instead of {reference.labels[first]})")


# --- the ensembles ---------------------------------------------------------------------------------

@dataclass
class Mixture:
    """The ensemble's per-example terms, its metrics and their bootstrap intervals."""

    terms: ExampleTerms
    metrics: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]


@dataclass
class SeedEnsemble:
    """A group's usable runs, each one's metrics, and their ensemble when there are enough."""

    group: Group
    members: list[Member]
    member_terms: list[ExampleTerms]
    member_metrics: list[dict[str, float]]
    skipped: list[str]
    mixture: Optional[Mixture] = None

    @property
    def member_mean(self) -> dict[str, float]:
        return {key: float(np.mean([one[key] for one in self.member_metrics])) for key in ENSEMBLE_METRICS}

    @property
    def seeds(self) -> list[Any]:
        return [member.job.seed for member in self.members]


def member_evaluation(member: Member) -> tuple[ExampleTerms, dict[str, float]]:
    log_probabilities = member.log_probabilities
    labels = torch.from_numpy(member.labels)
    nll = -log_probabilities.gather(1, labels[:, None]).squeeze(1)
    probabilities = log_probabilities.exp()
    return example_terms(probabilities, nll, labels), point_metrics(probabilities, nll, labels)


def mixture_of(members: Sequence[Member]) -> Mixture:
    """Mean of the members' probabilities; NLL of that mean, by logsumexp over the members."""
    log_probabilities = torch.stack([member.log_probabilities for member in members])  # [M, N, K]
    labels = torch.from_numpy(members[0].labels)
    probabilities = log_probabilities.exp().mean(dim=0)
    true_class = log_probabilities.gather(2, labels[None, :, None].expand(len(members), -1, 1))
    nll = -(true_class.squeeze(2).logsumexp(dim=0) - math.log(len(members)))
    terms = example_terms(probabilities, nll, labels)
    low, high = percentile_bootstrap(terms.metrics, len(labels))
    return Mixture(terms, point_metrics(probabilities, nll, labels),
                   dict(zip(ENSEMBLE_METRICS, low.tolist())), dict(zip(ENSEMBLE_METRICS, high.tolist())))


def group_members(group: Group) -> tuple[list[Member], list[str]]:
    """The group's usable members and a line for each completed run that is not one."""
    readable, skipped = [], []
    for job in group.completed:
        member, why = read_member(job)
        if member is None:
            skipped.append(f"{why}, skipped")
        else:
            readable.append(member)
    if not readable:
        return [], skipped
    kept, mismatched = same_predictions_of(readable)
    return kept, skipped + mismatched


def seed_ensemble(group: Group) -> SeedEnsemble:
    members, skipped = group_members(group)
    evaluations = [member_evaluation(member) for member in members]
    return SeedEnsemble(group, members, [terms for terms, _ in evaluations],
                        [metrics for _, metrics in evaluations], skipped,
                        mixture_of(members) if len(members) >= MIN_MEMBERS else None)


def ensemble_notes(one: SeedEnsemble) -> list[str]:
    notes = [f"{one.group.label}: {line}" for line in one.skipped]
    if one.mixture is None:
        found = (f"{len(one.members)} run with usable test logits (seed {one.seeds[0]})"
                 if one.members else "no completed run with usable test logits")
        notes.append(f"{one.group.label}: {found}, so no ensemble (it needs {MIN_MEMBERS} runs)")
    return notes


# --- a single model against the baseline group's ensemble ----------------------------------------

@dataclass
class Versus:
    """A group's runs against its baseline group's ensemble on one metric (same test examples)."""

    group: str
    baseline: str
    baseline_members: int
    metric: str
    name: str
    runs: int
    beat: int  # runs strictly better than the ensemble
    best_seed: Any
    best: float
    ensemble: float
    low: float  # paired bootstrap interval of best − ensemble
    high: float

    def line(self) -> str:
        unit = " pp" if self.metric in PERCENT_METRICS else ""
        interval = (f"[{format_difference(self.metric, self.low, False)}, "
                    f"{format_difference(self.metric, self.high, False)}]")
        return (f"{self.group} vs the {self.baseline} ensemble of {self.baseline_members}: "
                f"{self.name}: {self.beat} of {self.runs} runs beat it; best run (seed "
                f"{self.best_seed}) {self.best:.4f} vs {self.ensemble:.4f}, "
                f"{format_difference(self.metric, self.best - self.ensemble)}{unit} {interval}")


def versus_baseline(one: SeedEnsemble, baseline: SeedEnsemble) -> tuple[list[Versus], list[str]]:
    """Per compared metric, one Versus; a note when the two cannot be compared."""
    if baseline.mixture is None or not one.members:
        return [], []
    if not np.array_equal(one.members[0].labels, baseline.members[0].labels):
        return [], [(f"{one.group.label}: its test labels differ from {baseline.group.label}'s, "
                     "so its runs are not compared with that ensemble")]
    return [versus(one, baseline, metric, name, higher) for metric, name, higher in VERSUS_METRICS], []


def versus(one: SeedEnsemble, baseline: SeedEnsemble, metric: str, name: str, higher: bool) -> Versus:
    reference = baseline.mixture.metrics[metric]
    values = [metrics[metric] for metrics in one.member_metrics]
    sign = 1 if higher else -1
    best = max(range(len(values)), key=lambda index: sign * values[index])
    attribute = "correct" if metric == TEST_ACC else "nll"
    per_example = getattr(one.member_terms[best], attribute) - getattr(baseline.mixture.terms, attribute)
    low, high = percentile_bootstrap(lambda index: per_example[index].mean(axis=1)[None], len(per_example))
    return Versus(one.group.label, baseline.group.label, len(baseline.members), metric, name,
                  len(values), sum(sign * (value - reference) > 0 for value in values),
                  one.seeds[best], values[best], reference, float(low[0]), float(high[0]))


@dataclass
class EnsembleReport:
    """Every group's SeedEnsemble, its runs against its baseline group's ensemble, notes."""

    ensembles: list[SeedEnsemble]
    versus: list[Versus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline: str = ""


def build_ensembles(grouping: Grouping, selectors: Sequence[tuple[str, str]]) -> EnsembleReport:
    """``selectors``: the report's baseline (analysis.selectors); groups are paired with their
    baseline group as the comparisons pair them (which also name the groups left unpaired)."""
    ensembles = [seed_ensemble(group) for group in grouping.groups]
    by_group = {id(one.group): one for one in ensembles}
    notes = [note for one in ensembles for note in ensemble_notes(one)]
    compared = []
    for group, baseline in find_baselines(grouping, selectors)[0]:
        found, why = versus_baseline(by_group[id(group)], by_group[id(baseline)])
        compared += found
        notes += why
    return EnsembleReport(ensembles, compared, notes, " ".join(f"{k}={v}" for k, v in selectors))


# --- ensembles.csv and the summary.md section --------------------------------------------------------

def ensemble_rows(report: EnsembleReport) -> list[dict[str, Any]]:
    """ensembles.csv: one row per group with an ensemble, full-precision numbers."""
    rows = []
    for one in report.ensembles:
        if one.mixture is None:
            continue
        row = {"settings": one.group.label, "members": len(one.members),
               "member_seeds": " ".join(map(str, one.seeds)), "skipped": "; ".join(one.skipped)}
        for key in ENSEMBLE_METRICS:
            row.update({f"ensemble/{key}": one.mixture.metrics[key], f"members/{key}": one.member_mean[key],
                        f"ensemble/{key}_ci_low": one.mixture.low[key],
                        f"ensemble/{key}_ci_high": one.mixture.high[key]})
        rows.append(row)
    return rows


def ensemble_table(report: EnsembleReport) -> str:
    header = ["settings", "members", *(f"{METRIC_TITLES[key]}: {who}" for key in ENSEMBLE_METRICS
                                       for who in ("ensemble [95 % CI]", "members"))]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for one in report.ensembles:
        if one.mixture is None:
            continue
        cells = [one.group.label.replace("|", "\\|"), str(len(one.members))]
        for key in ENSEMBLE_METRICS:
            cells += [f"{one.mixture.metrics[key]:.4f} [{one.mixture.low[key]:.4f}, {one.mixture.high[key]:.4f}]",
                      f"{one.member_mean[key]:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


ENSEMBLE_METHOD = (
    "Per group, the ensemble of its completed seeds: the mean of their softmax probabilities on "
    "the test split (Lakshminarayanan et al. 2017), from each run's {file}; its NLL is that of the "
    "mean probabilities. \"ensemble\": its value with the 95 % percentile-bootstrap interval over "
    "test examples ({resamples} resamples, seed {seed}); \"members\": the mean of its runs' own "
    "values, computed the same way from the same files (ECE in the runs' {bins} bins). All numbers "
    "in {csv}.")


def versus_headline(report: EnsembleReport, metric: str, name: str) -> str:
    winners = [f"{one.group} ({one.beat} of {one.runs} runs)" for one in report.versus
               if one.metric == metric and one.beat]
    return f"on {name}: " + (f"yes, {', '.join(winners)}" if winners else "no")


def versus_section(report: EnsembleReport) -> list[str]:
    if not report.versus:
        return [(f"No run compared with a baseline ensemble ({report.baseline}): it needs a "
                 f"baseline group with {MIN_MEMBERS} runs and another group with the same other "
                 "settings.")]
    headline = "; ".join(versus_headline(report, metric, name) for metric, name, _ in VERSUS_METRICS)
    explanation = (f"**Does a single model beat the baseline ensemble ({report.baseline})?** "
                   f"{headline[0].upper()}{headline[1:]}. Per group: how many of its runs are "
                   "strictly better than its baseline group's ensemble on the same test examples, "
                   "and its best run's difference (run − ensemble: accuracy in percentage points, "
                   "NLL in nats) with a 95 % paired percentile-bootstrap interval over test "
                   "examples (the best run is picked after the fact, so that interval is "
                   "optimistic).")
    return [explanation, "\n".join(f"- {one.line()}" for one in report.versus)]


def ensemble_section(report: EnsembleReport) -> list[str]:
    """summary.md's "Ensemble of the seeds": the table, the single models against the baseline
    ensemble, and the groups without an ensemble or with runs left out."""
    parts = ["## Ensemble of the seeds",
             ENSEMBLE_METHOD.format(file=TEST_LOGITS_FILE, resamples=BOOTSTRAP_RESAMPLES,
                                    seed=BOOTSTRAP_SEED, bins=CALIBRATION_BINS, csv=ENSEMBLES_CSV)]
    if any(one.mixture is not None for one in report.ensembles):
        parts += [ensemble_table(report), *versus_section(report)]
    else:
        parts.append(f"No ensemble: no group has {MIN_MEMBERS} completed runs with usable test logits.")
    if report.notes:
        parts.append("\n".join(f"- {note}" for note in report.notes))
    return parts
