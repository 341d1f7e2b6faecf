"""Out-of-distribution detection in the report (runs with ``evaluation.ood``): a table in
summary.md of every group's AUROC and FPR95 per score (means over the OOD sets, mean ± std over
seeds), and histograms of one score on the in-distribution test split against each OOD set, pooled
over the group's seeds (from each run's ``test_ood.npz``). Nothing of it appears for a sweep whose
runs recorded no ``ood/*`` keys.

The scores are evaluation/ood.py's, each higher for an input taken as in-distribution; AUROC is
the probability that an in-distribution input scores above an OOD one (higher is better), FPR95
the share of OOD inputs accepted at the threshold that keeps 95 % of the in-distribution ones
(lower is better).

numpy is imported where the files are read, matplotlib where the figure is drawn.
"""

from __future__ import annotations

import statistics
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from regbench.config import one_line
from regbench.evaluation.ood import SCORES
from regbench.report.groups import Group, finite_values, format_mean_std
from regbench.report.jobs import Job
from regbench.report.outputs import OOD_HISTOGRAMS_PNG
from regbench.run.folder import RunFolder
from regbench.run.spec import TEST_OOD_FILE, ood_mean_key, ood_set_key

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

# The score the histograms show: the maximum softmax probability, Hendrycks & Gimpel 2017's
# baseline, which every later OOD paper reports next to its own.
HISTOGRAM_SCORE = "msp"
# test_ood.npz: the in-distribution scores are in_<score>, each OOD set's <set>_<score>.
IN_DISTRIBUTION = "in"
HISTOGRAM_BINS = 30
IN_COLOR, OUT_COLOR = "#0072B2", "#D55E00"  # Okabe & Ito's blue and vermillion (plots.OKABE_ITO)


def ood_groups(groups: Sequence[Group]) -> list[Group]:
    """The groups some of whose completed runs recorded OOD means (ood/auroc_<score>)."""
    keys = {ood_mean_key("auroc", score) for score in SCORES}
    return [group for group in groups
            if any(keys & job.metrics.keys() for job in group.completed)]


def ood_set_names(group: Group) -> list[str]:
    """The OOD sets the group's completed runs recorded (ood/<set>/auroc_<first score>)."""
    score = next(iter(SCORES))
    suffix = f"/auroc_{score}"
    return sorted({key[len("ood/"):-len(suffix)] for job in group.completed for key in job.metrics
                   if key.startswith("ood/") and key.endswith(suffix) and key.count("/") == 2})


# --- summary.md -----------------------------------------------------------------------------------

def ood_section(groups: Sequence[Group], score: str = HISTOGRAM_SCORE) -> list[str]:
    """The "Out-of-distribution detection" section; [] when no run recorded ood/ keys."""
    shown = ood_groups(groups)
    if not shown:
        return []
    columns = [(ood_mean_key(metric, name), f"{metric.upper()} {name}")
               for metric in ("auroc", "fpr95") for name in SCORES]
    header = ["settings", "seeds", "OOD sets", *(title for _, title in columns)]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---|" + "---:|" * len(columns)]
    for group in shown:
        done = group.completed
        cells = [group.label, str(len(done)), ", ".join(ood_set_names(group)),
                 *(format_mean_std(finite_values(done, key), ".4f", len(done)) for key, _ in columns)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    problems = [f"- ⚠ {line}" for line in unreadable_files(shown, score)]
    return ["## Out-of-distribution detection", SECTION_TEXT.format(score=score),
            "\n".join(lines), *(["\n".join(problems)] if problems else []),
            f"![{score} on the test split against each OOD set]({OOD_HISTOGRAMS_PNG})"]


SECTION_TEXT = (
    "Mean ± std over seeds of each run's mean over its OOD sets (every set counts once; per-set "
    "values in summary.csv, ood/<set>/...). In-distribution inputs are the positive class: AUROC "
    "is the probability that a test image scores above an OOD input (higher is better, 0.5 is "
    "chance), FPR95 the share of OOD inputs accepted at the threshold that keeps 95 % of the test "
    "images (lower is better). Scores: msp the maximum softmax probability, maxlogit the largest "
    "logit, energy logsumexp of the logits (T = 1), entropy the negative predictive entropy. The "
    "histograms show {score}, pooled over each group's seeds."
)


# --- test_ood.npz ---------------------------------------------------------------------------------

@dataclass
class PooledScores:
    """One group's scores of one kind, each seed's test_ood.npz concatenated."""

    group: Group
    runs: int = 0
    inside: list[np.ndarray] = field(default_factory=list)
    sets: dict[str, list[np.ndarray]] = field(default_factory=dict)


def read_scores(job: Job, score: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(in-distribution scores, {OOD set: scores}) of one run's test_ood.npz; raises OSError,
    ValueError, KeyError or zipfile.BadZipFile for a missing, torn or malformed file."""
    import numpy as np

    path = RunFolder(job.folder).file(TEST_OOD_FILE)
    suffix = f"_{score}"
    with np.load(path, allow_pickle=False) as arrays:
        inside = np.asarray(arrays[f"{IN_DISTRIBUTION}{suffix}"], dtype=np.float64)
        sets = {name[:-len(suffix)]: np.asarray(arrays[name], dtype=np.float64)
                for name in arrays.files
                if name.endswith(suffix) and name != f"{IN_DISTRIBUTION}{suffix}"}
    return inside, sets


READ_ERRORS = (OSError, ValueError, KeyError, zipfile.BadZipFile)


def pooled_scores(groups: Sequence[Group], score: str) -> tuple[list[PooledScores], list[str]]:
    """Per group with OOD keys, its seeds' scores; and a line per file that could not be read."""
    pooled, problems = [], []
    for group in ood_groups(groups):
        scores = PooledScores(group)
        for job in group.completed:
            try:
                inside, sets = read_scores(job, score)
            except READ_ERRORS as error:
                problems.append(f"{job.name}/{TEST_OOD_FILE}: {one_line(error)}; left out of the "
                                "histograms")
                continue
            scores.runs += 1
            scores.inside.append(inside)
            for name, values in sets.items():
                scores.sets.setdefault(name, []).append(values)
        if scores.runs:
            pooled.append(scores)
    return pooled, problems


def unreadable_files(groups: Sequence[Group], score: str) -> list[str]:
    return pooled_scores(groups, score)[1]


# --- the histograms -------------------------------------------------------------------------------

def set_auroc(group: Group, set_name: str, score: str) -> str:
    values = finite_values(group.completed, ood_set_key(set_name, "auroc", score))
    return f", AUROC {statistics.fmean(values):.3f}" if values else ""


def shared_edges(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """HISTOGRAM_BINS equal bins over the finite values of ``arrays`` together: a column's groups
    share them, so that their histograms can be compared."""
    import numpy as np

    values = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.zeros(0)
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    return np.linspace(low, high if high > low else low + 1.0, HISTOGRAM_BINS + 1)


def draw_panel(axes, inside: np.ndarray, outside: np.ndarray, edges: np.ndarray) -> None:
    """Both distributions on the same bins, each as a share of its own inputs (the OOD set and
    the test split need not be the same size)."""
    import numpy as np

    for data, color, fill in ((inside, IN_COLOR, True), (outside, OUT_COLOR, False)):
        counts, _ = np.histogram(data[np.isfinite(data)], bins=edges)
        shares = counts / max(counts.sum(), 1)
        if fill:
            axes.stairs(shares, edges, color=color, fill=True, alpha=0.35)
        axes.stairs(shares, edges, color=color, linewidth=1.4)


def histogram_figure(groups: Sequence[Group], score: str = HISTOGRAM_SCORE) -> Optional[Figure]:
    """A row per group, a column per OOD set: ``score`` on the test split (filled) against the
    set (outline), pooled over seeds. None when no run recorded ood/ keys."""
    if not ood_groups(groups):
        return None
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from regbench.report.plots import empty_figure, pooled_text, wrap

    pooled, _ = pooled_scores(groups, score)
    set_names = sorted({name for scores in pooled for name in scores.sets})
    if not set_names:
        return empty_figure(f"no readable {TEST_OOD_FILE} with {score} scores from completed runs")
    import numpy as np

    # At least as wide as the title, which one OOD set's column is not.
    figure = Figure(figsize=(max(6.6, 3.2 * len(set_names) + 0.4), 2.5 * len(pooled) + 0.9), dpi=100,
                    layout="constrained")
    grid = figure.subplots(len(pooled), len(set_names), squeeze=False, sharex="col")
    edges = {name: shared_edges([a for scores in pooled if name in scores.sets
                                 for a in (*scores.inside, *scores.sets[name])]) for name in set_names}
    for row, scores in zip(grid, pooled):
        inside = np.concatenate(scores.inside)
        for axes, name in zip(row, set_names):
            if name not in scores.sets:
                axes.set_axis_off()
                continue
            draw_panel(axes, inside, np.concatenate(scores.sets[name]), edges[name])
            axes.set_title(f"{wrap(scores.group.label)}\nvs {name}{set_auroc(scores.group, name, score)}, "
                           f"{pooled_text(scores.runs, len(scores.group.completed))}", fontsize="small")
        row[0].set_ylabel("share of inputs")
    for axes in grid[-1]:
        axes.set_xlabel(f"{score} (higher: taken as in-distribution)", fontsize="small")
    figure.legend(handles=[Line2D([], [], color=IN_COLOR, linewidth=4, alpha=0.6, label="test split"),
                           Line2D([], [], color=OUT_COLOR, label="OOD set")],
                  loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    figure.suptitle(f"OOD detection: {score} on the test split vs each OOD set, pooled over seeds")
    return figure


def write_ood_plots(out: Path, groups: Sequence[Group], score: str = HISTOGRAM_SCORE
                    ) -> dict[str, Figure]:
    """ood_histograms.png where the runs recorded OOD sets; returns it by file name."""
    from regbench.report.plots import save_figure

    figure = histogram_figure(groups, score)
    if figure is None:
        return {}
    save_figure(figure, out / OOD_HISTOGRAMS_PNG)
    return {OOD_HISTOGRAMS_PNG: figure}
