"""A sweep's results at a glance: ``python -m regbench.report <sweep folder>`` / ``regbench-report``.

Reads every job folder of a Hydra multirun (a folder a run claimed, holding ``spec.json``; or, for
an older regbench's job that never started, one holding only ``.hydra/``): its experiment settings
from ``spec.json`` (from ``.hydra/config.yaml`` by the same rule, ``spec.experiment_settings``, for
that older folder), its results from ``metrics.json`` and ``test_calibration.json``. Runs whose
experiment settings are equal form one group: they differ only in their seed. Writes into the sweep
folder:

- ``summary.csv``: one row per job (settings that vary, seed, every numeric metric);
- ``summary.md``: one row per group (mean ± standard deviation over completed seeds), then the
  runs that failed or have not finished;
- ``accuracy_vs_ece.png``, ``reliability.png``, ``confidence_hist.png``;
- ``comparisons.csv`` / ``comparisons.png``: every group against its baseline group (by default
  ``regularizer=none`` with the same other settings), paired by seed, per key metric: mean
  difference, 95 % t-interval, paired t-test, Holm-adjusted p, probability of improvement, verdict;
- ``ranks.png``: with several datasets/models ("blocks"), the regularizers' average ranks, Friedman
  test and Nemenyi critical-difference diagram (Demšar 2006);
- ``report/``: the same in TensorBoard (Text, Images and HParams tabs).

Several sweep folders can be given together; their jobs are pooled and the outputs go to the first.

Safe on a sweep that is still running or partly failed: a job without ``metrics.json`` is listed as
unfinished, one whose status is not ``completed`` as failed; neither is averaged.

The modules, from the bottom up: outputs (every file name written), jobs (reading a job folder),
groups (grouping, the number helpers), statistics (pure tests), comparisons (against the baseline),
ranks, analysis (both, once), calibration and probes (their summary.md sections), tables
(summary.csv, summary.md), plots, events (TensorBoard), command (the entrypoint). Importing this
package imports none of them, so no matplotlib or scipy.
"""

from __future__ import annotations

import importlib
from typing import Any

# The names imported from the package itself, by the module that defines them: the regbench-report
# script (pyproject.toml: regbench.report:main) and tests that import through the package
# (tests/report/test_report_at_a_glance.py, tests/run/test_run_lifecycle.py). Loaded on first use
# (PEP 562).
EXPORTS = {
    "main": "command", "make_report": "command",
    "Job": "jobs", "load_job": "jobs", "Group": "groups", "Grouping": "groups",
    "OKABE_ITO": "plots", "accuracy_vs_ece": "plots", "reliability": "plots", "repel_offsets": "plots",
}


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *EXPORTS])
