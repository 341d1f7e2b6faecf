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
- ``ensembles.csv``: per group with two completed runs or more, the ensemble of its seeds (mean of
  their test probabilities, from each run's ``test_logits.npz``) next to its members' mean, and in
  summary.md whether a single run beats its baseline group's ensemble;
- ``ranks.png``: with several datasets/models ("blocks"), the regularizers' average ranks, Friedman
  test and Nemenyi critical-difference diagram (Demšar 2006);
- ``shift.csv`` / ``shift_severity.png`` and ``ood_histograms.png``, when runs recorded corruption
  shift or OOD sets: each group's mean corruption error against its baseline, accuracy and ECE
  against severity, OOD score histograms (the shift and OOD summary keys join the verdicts);
- ``report/``: the same in TensorBoard (Text, Images and HParams tabs), and ``report/groups/<group>``:
  one run per group, the mean over its seeds of every per-epoch scalar with the seeds' range;
- ``report.html``: everything above on one self-contained page (figures embedded), verdicts first,
  with the commands to reproduce the sweep;
- with runs logged by ``logger=mlflow``: a parent MLflow run holding the tables and the page, the
  runs nested under it (``mlflow_report.json`` keeps its id).

Several sweep folders can be given together; their jobs are pooled and the outputs go to the first.
A run found in several job folders (same experiment settings and seed) is counted once.

Safe on a sweep that is still running or partly failed: a job without ``metrics.json`` is listed as
unfinished, one whose status is not ``completed`` as failed; neither is averaged.

The modules, from the bottom up: outputs (every file name written), jobs (reading a job folder),
duplicates (one run counted once), groups (grouping, the number helpers), statistics (pure tests),
split_noise (the test split's own noise), comparisons (against the baseline),
ranks, analysis (both, once), calibration, shift, ood, probes and ensembles (their summary.md sections), tables
(summary.csv, summary.md), plots, events (TensorBoard), html (report.html), mlflow_report, command
(the entrypoint). Importing this
package imports none of them, so no matplotlib or scipy.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

PROGRAM = "regbench-report"
# Exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT = 130


def main(argv: Any = None) -> None:
    """The ``regbench-report`` script (pyproject.toml: regbench.report:main) and ``python -m
    regbench.report``; the command module is imported only when it runs, so importing the package
    stays light. Ctrl-C, during the imports too, is one line: every output is written atomically,
    so what was written is whole and the rest keeps its previous version."""
    try:
        from regbench.report.command import main as report_main

        report_main(argv)
        # Everything is written: a Ctrl-C now would only turn the interpreter's exit into a kill.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted; the files written are whole and the others keep their "
              "previous version: run the same command again to write them all", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
