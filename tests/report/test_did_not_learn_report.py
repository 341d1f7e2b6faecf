"""Runs that did not learn (metrics.json ``did_not_learn``: final training accuracy near chance) are
flagged in the group table, in the verdicts and in the CSV files; older runs without the key are
unknown and not flagged."""

from __future__ import annotations

import csv

from regbench.report.command import make_report
from regbench.run.spec import DID_NOT_LEARN
from sweep_folders import fake_sweep, read_comparisons, row_for, table_rows

# dropout: seeds 0 and 1 stayed at chance; label_smoothing: an older regbench, no key.
FLAGS = {"none": [False, False, False], "dropout": [True, True, False], "label_smoothing": [None] * 3}


def sweep_with_runs_that_did_not_learn(tmp_path):
    runs = []
    for regularizer, flags in FLAGS.items():
        for seed, flag in enumerate(flags):
            metrics = {"test/acc": 0.1 if flag else 0.9 + seed / 100}
            runs.append((regularizer, seed, metrics if flag is None else {**metrics, DID_NOT_LEARN: flag}))
    folder = fake_sweep(tmp_path / "sweep", runs)
    return folder, make_report(folder)


def test_groups_with_runs_that_did_not_learn_are_marked_in_the_table(tmp_path):
    _, text = sweep_with_runs_that_did_not_learn(tmp_path)
    rows = table_rows(text)
    assert next(line for line in text.splitlines() if line.startswith("| settings")).endswith("| warning |")
    assert {label: cells[-1] for label, cells in rows.items()} == {
        "none": "", "dropout": "⚠ 2/3 runs did not learn", "label_smoothing": ""}


def test_comparisons_say_when_a_side_has_runs_that_did_not_learn(tmp_path):
    folder, text = sweep_with_runs_that_did_not_learn(tmp_path)
    verdicts = [line for line in text.split("## Groups")[0].splitlines() if " vs none: " in line]
    assert verdicts and all(line.endswith(" ⚠ dropout: 2/3 runs did not learn")
                            for line in verdicts if line.startswith("- dropout vs"))
    assert not any("⚠" in line for line in verdicts if line.startswith("- label_smoothing vs"))
    rows = read_comparisons(folder)
    assert row_for(rows, "dropout", "test/acc")["did_not_learn"] == "dropout: 2/3 runs did not learn"
    assert row_for(rows, "label_smoothing", "test/acc")["did_not_learn"] == ""


def test_summary_csv_has_each_runs_flag_and_leaves_it_empty_where_unknown(tmp_path):
    folder, _ = sweep_with_runs_that_did_not_learn(tmp_path)
    with (folder / "summary.csv").open() as file:
        flags = [(row["regularizer"], row[DID_NOT_LEARN]) for row in csv.DictReader(file)]
    assert flags == [("none", "false")] * 3 + [("dropout", "true")] * 2 + [("dropout", "false")] + \
        [("label_smoothing", "")] * 3


def test_a_sweep_of_older_runs_has_no_warning_column(tmp_path):
    folder = fake_sweep(tmp_path / "sweep", [("none", seed, {"test/acc": 0.9}) for seed in range(2)])
    text = make_report(folder)
    assert "warning" not in next(line for line in text.splitlines() if line.startswith("| settings"))
    assert "did not learn" not in text
