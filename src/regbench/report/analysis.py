"""What the report adds to the tables: every group against its baseline (comparisons.py, with the
test split's noise from split_noise.py) and the ranks across settings (ranks.py), computed once and
handed to the markdown (tables.py) and the plots (plots.py), with the figures it has something to
draw for (``analysis_figures``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from regbench.report.comparisons import (
    DEFAULT_BASELINE,
    Comparison,
    build_comparisons,
    check_selectors,
    parse_selectors,
)
from regbench.report.groups import Grouping
from regbench.report.jobs import Job
from regbench.report.outputs import COMPARISONS_PNG, RANKS_PNG
from regbench.report.ranks import Ranking, build_ranking
from regbench.report.split_noise import add_split_noise
from regbench.run.spec import TEST_ACC


@dataclass
class Analysis:
    """What the report adds to the table: comparisons against the baseline and the ranking."""

    selectors: Sequence[tuple[str, str]] = DEFAULT_BASELINE
    comparisons: list[Comparison] = field(default_factory=list)
    comparison_notes: list[str] = field(default_factory=list)
    ranking: Optional[Ranking] = None
    ranking_notes: list[str] = field(default_factory=list)


def analyse(jobs: Sequence[Job], grouping: Grouping, baseline: Sequence[str] = (),
            rank_metric: str = TEST_ACC) -> Analysis:
    """``baseline``: key=value selectors (default regularizer=none); a selector that matches no
    group is a ReportError."""
    selectors = parse_selectors(baseline) if baseline else list(DEFAULT_BASELINE)
    if baseline:
        check_selectors(grouping, selectors)
    comparisons, comparison_notes = build_comparisons(jobs, grouping, selectors)
    comparison_notes += add_split_noise(comparisons)
    ranking, ranking_notes = build_ranking(grouping, rank_metric)
    return Analysis(selectors, comparisons, comparison_notes, ranking, ranking_notes)


def analysis_figures(analysis: Analysis) -> dict[str, str]:
    """The analysis' figures that have something to show, by name: comparisons.png with some
    comparison, ranks.png with a ranking. A skipped one is not drawn (no picture of a sentence:
    summary.md says why in words) and not embedded."""
    figures = {"comparisons": COMPARISONS_PNG} if analysis.comparisons else {}
    if analysis.ranking is not None:
        figures["ranks"] = RANKS_PNG
    return figures
