"""The files the report writes into the (first) sweep folder, named once: the tables, the plots and
the verdict text that points at them all read their names from here."""

from __future__ import annotations

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOT_FILES = {"accuracy_vs_ece": "accuracy_vs_ece.png", "reliability": "reliability.png",
              "confidence_hist": "confidence_hist.png"}
COMPARISONS_CSV = "comparisons.csv"
COMPARISONS_PNG = "comparisons.png"
ENSEMBLES_CSV = "ensembles.csv"  # the ensemble of each group's seeds (ensembles.py)
RANKS_PNG = "ranks.png"
# Drawn only when the sweep has what they show (probes.py).
TRAIN_LOSS_PNG = "train_loss.png"
EFFECTIVE_LR_PNG = "effective_lr.png"
# Drawn only when the runs recorded corruption shift or OOD sets (shift.py, ood.py).
SHIFT_CSV = "shift.csv"
SHIFT_SEVERITY_PNG = "shift_severity.png"
OOD_HISTOGRAMS_PNG = "ood_histograms.png"
# The whole report as one self-contained page (html.py): verdicts, tables, figures, commands.
REPORT_HTML = "report.html"
# Under the sweep folder, so `tensorboard --logdir <sweep>` shows it as the run "report".
REPORT_EVENTS_DIR = "report"
