"""Reading a sweep's job folders: what a run writes, and the folder of an older regbench's job."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from regbench.report.command import make_report
from regbench.report.groups import group_jobs
from regbench.report.jobs import load_jobs
from regbench.run.spec import (
    HYDRA_CONFIG_FILE,
    HYDRA_OVERRIDES_FILE,
    HYDRA_SUBDIR,
    experiment_settings,
)
from sweep_folders import job_config, write_job


def write_older_unstarted_job(folder: Path, regularizer: str, seed: int) -> None:
    """An older regbench's job that never started: Hydra had written .hydra/ before the job ran,
    the job wrote nothing (no spec.json, no metrics.json)."""
    (folder / HYDRA_SUBDIR).mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(job_config(regularizer, seed)), folder / HYDRA_SUBDIR / HYDRA_CONFIG_FILE)
    OmegaConf.save(OmegaConf.create([f"seed={seed}", f"regularizer={regularizer}"]),
                   folder / HYDRA_SUBDIR / HYDRA_OVERRIDES_FILE)


def test_an_older_regbenchs_hydra_only_folder_still_reports(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep / "0", "none", 0, {"test/acc": 0.9})
    write_older_unstarted_job(sweep / "1", "none", 1)
    jobs = load_jobs(sweep)
    older = jobs[1]
    assert (older.name, older.status, older.seed) == ("1", "unfinished", 1)
    assert older.settings == experiment_settings(job_config("none", 1)) == jobs[0].settings
    assert older.overrides == ["seed=1", "regularizer=none"]
    assert [len(group.jobs) for group in group_jobs(jobs).groups] == [2]  # the same experiment
    text = make_report(sweep)
    assert "- `1` **unfinished**: no metrics.json yet (running or interrupted): 0 of 3 epochs in " \
           "history.jsonl (`seed=1 regularizer=none`)" in text
