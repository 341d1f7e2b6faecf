"""Ranks across settings: with several datasets/models ("blocks"), the methods (a regularizer with
its parameters) ranked within each block on the mean over seeds of one metric, then the Friedman
test and Nemenyi's critical difference of statistics.py (Demšar 2006)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from regbench.report.comparisons import format_p
from regbench.report.groups import (
    ABSENT,
    Grouping,
    finite_values,
    full_settings,
    is_regularizer_key,
    label_keys,
    make_label,
    show,
)
from regbench.report.outputs import RANKS_PNG
from regbench.report.statistics import ALPHA, RankTest, rank_test
from regbench.run.spec import BASELINE, REGULARIZER_KEY, lower_is_better


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
        regularizer = group.settings.get(REGULARIZER_KEY,
                                         full_settings(group).get(REGULARIZER_KEY, BASELINE))
        method = make_label(regularizer, present(group.settings), method_keys)
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
    """summary.md's lines on the ranks, the tests and the critical difference."""
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
