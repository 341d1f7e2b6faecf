"""Grouping jobs by their experiment settings, and the mean ± std cell, against hand calculations."""

from __future__ import annotations

from pathlib import Path

from regbench.report.groups import format_mean_std, group_jobs
from regbench.report.jobs import Job
from regbench.run.spec import experiment_settings as comparable_settings
from sweep_folders import config


def job(name: str, cfg: dict) -> Job:
    return Job(name, Path(name), "completed", comparable_settings(cfg), cfg["seed"])


def test_seed_never_splits_a_group():
    jobs = [job(str(i), config(seed=i)) for i in range(4)]
    grouping = group_jobs(jobs)
    assert len(grouping.groups) == 1
    assert grouping.groups[0].label == "none"
    assert [j.name for j in grouping.groups[0].jobs] == ["0", "1", "2", "3"]


def test_ignored_keys_do_not_split_groups():
    other = config(seed=1, num_threads=4, device="cuda", progress=True)
    other["dataset"].update(root="/elsewhere", download=False, num_workers=0)
    grouping = group_jobs([job("0", config(seed=0, num_threads=1, device="cpu")), job("1", other)])
    assert grouping.varying == []
    assert len(grouping.groups) == 1


def test_results_changing_keys_split_groups_and_name_them():
    jobs = [job(str(i), config(seed=seed, lr=lr, regularizer=reg))
            for i, (seed, lr, reg) in enumerate([
                (0, 0.1, None), (1, 0.1, None), (0, 0.05, None),
                (0, 0.1, {"label_smoothing": {"epsilon": 0.1}, "dropout": {"p": 0.5}}),
                (1, 0.1, {"label_smoothing": {"epsilon": 0.1}, "dropout": {"p": 0.5}}),
                (0, 0.1, {"label_smoothing": {"epsilon": 0.2}, "dropout": {"p": 0.5}}),
            ])]
    grouping = group_jobs(jobs)
    labels = {group.label: [j.name for j in group.jobs] for group in grouping.groups}
    # epsilon takes two values, so it is named; dropout.p is only present or absent, so it is not.
    assert labels == {
        "none, optimizer.lr=0.1": ["0", "1"],
        "none, optimizer.lr=0.05": ["2"],
        "dropout+label_smoothing, optimizer.lr=0.1, regularizer.label_smoothing.epsilon=0.1": ["3", "4"],
        "dropout+label_smoothing, optimizer.lr=0.1, regularizer.label_smoothing.epsilon=0.2": ["5"],
    }
    assert grouping.varying[0] == "regularizer"
    assert "regularizer.dropout.p" in grouping.varying  # still a summary.csv column


def test_regularizer_list_is_a_sorted_name():
    assert comparable_settings(config(regularizer={"l2": {"weight_decay": 1e-4},
                                                   "dropout": {"p": 0.1}}))["regularizer"] == "dropout+l2"
    assert comparable_settings(config(regularizer={}))["regularizer"] == "none"



def test_mean_and_sample_std_formatting():
    # mean 0.5, sample std sqrt(((0.4-0.5)^2 + (0.6-0.5)^2) / 1) = 0.1414.
    assert format_mean_std([0.4, 0.6], ".4f", runs=2) == "0.5000 ± 0.1414"
    assert format_mean_std([0.4], ".4f", runs=1) == "0.4000"
    assert format_mean_std([0.4, 0.6], ".2f", runs=3) == "0.50 ± 0.14 (n=2)"
    assert format_mean_std([], ".4f", runs=0) == "–"
