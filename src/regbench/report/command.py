"""``python -m regbench.report`` / ``regbench-report``: the command line, and ``make_report``, which
reads the sweeps, analyses them and writes every output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from regbench.files import atomic_write_bytes
from regbench.report import PROGRAM
from regbench.report.analysis import analyse
from regbench.report.calibration import unusable_calibration_files
from regbench.report.comparisons import (
    add_equivalence,
    check_margins,
    comparison_header,
    comparison_rows,
    parse_margins,
)
from regbench.report.duplicates import merge_duplicates
from regbench.report.ensembles import ENSEMBLE_COLUMNS, build_ensembles, ensemble_rows
from regbench.report.events import write_report_events
from regbench.report.groups import group_jobs
from regbench.report.html import HtmlReport, write_html_report
from regbench.report.jobs import ReportError, load_sweeps
from regbench.report.mlflow_report import log_report
from regbench.report.ood import write_ood_plots
from regbench.report.outputs import (
    COMPARISONS_CSV,
    COMPARISONS_PNG,
    ENSEMBLES_CSV,
    PLOT_FILES,
    RANKS_PNG,
    REPORT_EVENTS_DIR,
    REPORT_HTML,
    SHIFT_CSV,
    SUMMARY_CSV,
    SUMMARY_MD,
)
from regbench.report.plots import write_plots
from regbench.report.probes import write_probe_plots
from regbench.report.shift import shift_table, write_shift_plots
from regbench.report.tables import csv_rows, markdown_report, markdown_table, write_csv
from regbench.run.spec import TEST_ACC


def make_report(sweep: Path | Sequence[Path], baseline: Sequence[str] = (),
                rank_metric: str = TEST_ACC, margins: Optional[Mapping[str, float]] = None) -> str:
    """Write every output into ``sweep`` (the first folder, with several); returns summary.md's
    text. ``baseline``: key=value selectors (default regularizer=none). ``margins``: metric ->
    equivalence margin (comparisons.parse_margins), a TOST verdict for each of its comparisons."""
    sweeps = [sweep] if isinstance(sweep, Path) else list(sweep)
    margins = dict(margins or {})
    jobs = merge_duplicates(load_sweeps(sweeps))
    check_margins(jobs, margins)
    grouping = group_jobs(jobs)
    analysis = analyse(jobs, grouping, baseline, rank_metric)
    add_equivalence(analysis.comparisons, margins)
    out = sweeps[0]
    header, rows = csv_rows(jobs, grouping)
    write_csv(out / SUMMARY_CSV, header, rows)
    write_csv(out / COMPARISONS_CSV, comparison_header(analysis.comparisons),
              comparison_rows(analysis.comparisons))
    if shift := shift_table(grouping, analysis.selectors):
        write_csv(out / SHIFT_CSV, *shift)
    ensembles = build_ensembles(grouping, analysis.selectors)
    write_csv(out / ENSEMBLES_CSV, list(ENSEMBLE_COLUMNS), ensemble_rows(ensembles))
    text = markdown_report(sweeps, jobs, grouping, analysis, ensembles)
    for line in unusable_calibration_files(grouping.groups):
        print(f"{PROGRAM}: warning: {line}", file=sys.stderr)
    atomic_write_bytes(out / SUMMARY_MD, text.encode())
    figures = write_plots(out, grouping, analysis)
    probe_files = write_probe_plots(out, grouping.groups)
    figures.update(write_shift_plots(out, grouping.groups))
    figures.update(write_ood_plots(out, grouping.groups))
    write_report_events(out, jobs, {"report/summary": text, "report/groups": markdown_table(grouping)},
                        figures)
    # Last: the page embeds every figure and table written above.
    write_html_report(HtmlReport(sweeps, jobs, grouping, analysis, ensembles,
                                 {**figures, **{name: out / name for name in probe_files}},
                                 baseline, rank_metric, margins))
    # Runs logged with logger=mlflow: the report's files as a parent run, the runs nested under it.
    tables = [out / name for name in (SUMMARY_CSV, SUMMARY_MD, COMPARISONS_CSV, ENSEMBLES_CSV,
                                      SHIFT_CSV, REPORT_HTML)]
    if mlflow_line := log_report(out, [job.folder for job in jobs], tables):
        print(f"{PROGRAM}: {mlflow_line}", file=sys.stderr)
    return text


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Summarize regbench sweeps: tables and plots with seeds grouped, every group "
                    "compared with a baseline group (paired by seed: t-test, Holm-adjusted p, "
                    "probability of improvement), and ranks across datasets/models.")
    # "*", not "+": folders after --equivalence's items are swallowed by it, and main says so in
    # one line instead of argparse's "the following arguments are required".
    parser.add_argument("sweep", type=Path, nargs="*",
                        help="one or more multirun folders (each holding one folder per job); "
                             "their jobs are pooled and every output is written to the FIRST folder")
    # One value per flag (repeat it for several): nargs="+" would swallow the sweep folders after it.
    parser.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                        help="the baseline group, as an override-style selector matched against "
                             "each group's settings; repeat for several (all must match; default: "
                             "regularizer=none); settings not named must equal the compared group's")
    parser.add_argument("--rank-metric", default=TEST_ACC, metavar="KEY",
                        help="metrics.json key to rank methods on across blocks (default test/acc; "
                             "nll, ece, loss, gap and similar keys are ranked lower-is-better)")
    parser.add_argument("--equivalence", action="extend", nargs="+", default=[],
                        metavar="KEY=MARGIN",
                        help="an equivalence verdict (TOST) for each comparison on these metrics: "
                             "equivalent within ±MARGIN, not shown equivalent, or different; the "
                             "margin in the metric's own units (test/acc=0.003 is 0.3 points), "
                             "e.g. --equivalence test/acc=0.003 test/ece=0.005 (after the sweep "
                             "folders, or end the list with --)")
    args = parser.parse_args(argv)
    if not args.sweep and not any("=" not in item for item in args.equivalence):
        parser.error("the following arguments are required: sweep")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        margins = parse_margins(args.equivalence)
        text = make_report(args.sweep, args.baseline, args.rank_metric, margins)
    except ReportError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(text, end="")
    # comparisons.png and ranks.png are drawn only when they have something to show (plots.py).
    written = [name for name in (SUMMARY_CSV, SUMMARY_MD, COMPARISONS_CSV, ENSEMBLES_CSV,
                                 *PLOT_FILES.values(), COMPARISONS_PNG, RANKS_PNG, REPORT_HTML)
               if (args.sweep[0] / name).is_file()]
    outputs = ", ".join([*written, f"{REPORT_EVENTS_DIR}/ (TensorBoard)"])
    print(f"\nwrote {outputs} in {args.sweep[0]}")
    print(f"open it:      {(args.sweep[0] / REPORT_HTML).resolve()}  (one self-contained page)")
    print(f"see it:       tensorboard --logdir {args.sweep[0]}  (Custom Scalars: one line per group; "
          f"Time Series, Text, Images, HParams tabs)")
