"""Comparisons at scale: parallel grids with a report, the SLURM code path, resumable sweeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_history, read_metrics, run_cli

pytestmark = pytest.mark.slow

FAST = ["trainer.progress=false", "trainer.num_threads=1", "evaluation.figures=false"]


def job_metrics(sweep: Path) -> dict[str, dict]:
    return {path.parent.name: read_metrics(path.parent) for path in sweep.glob("*/metrics.json")}


def test_a_grid_on_the_default_launcher_is_reported(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "seed=0,1",
                      "regularizer=none,label_smoothing", "trainer.epochs=2", *FAST,
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sweep finished: 4 jobs (4 completed)" in result.stdout
    jobs = job_metrics(sweep)
    assert len(jobs) == 4 and all(m["status"] == "completed" for m in jobs.values())
    assert sorted((m["regularizer"][0], m["seed"]) for m in jobs.values()) == [
        ("label_smoothing", 0), ("label_smoothing", 1), ("none", 0), ("none", 1)]

    report = run_cli([str(sweep)], cwd=tmp_path, module="regbench.report")
    assert report.returncode == 0, report.stderr
    table = (sweep / "summary.md").read_text()
    assert table.splitlines()[0] in report.stdout
    for group in ("none", "label_smoothing"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {group} |"))
        accuracies = [m["test/acc"] for m in jobs.values() if m["regularizer"] == [group]]
        assert f"{sum(accuracies) / 2:.4f}" in row
        assert "| 2 |" in row  # two seeds
    assert len((sweep / "summary.csv").read_text().strip().splitlines()) == 5
    for plot in ("accuracy_vs_ece.png", "reliability.png", "confidence_hist.png"):
        assert (sweep / plot).stat().st_size > 5000


def test_submitit_local_runs_the_slurm_code_path(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                      "trainer.epochs=1", *FAST, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert job_metrics(sweep)["0"]["status"] == "completed"
    assert "sweep finished: 1 jobs (1 completed)" in result.stdout  # recorded in the job's process
    assert list((sweep / ".submitit").rglob("*_result.pkl"))  # ran through submitit


def test_slurm_preset_composes():
    from hydra import compose, initialize_config_dir

    from conftest import compose_config
    from regbench.cli.compose import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 240
    assert compose_config()  # the plain config still composes


def test_interrupted_sweep_is_finished_by_running_it_again(tmp_path):
    sweep = tmp_path / "sweep"
    # One job at a time: the interruption leaves one job completed, one interrupted, one not begun.
    command = [sys.executable, "-m", "regbench", "-m", "hydra/launcher=basic", "seed=0,1,2",
               "trainer.epochs=15", "model.hidden_sizes=[256,256]", *FAST, f"hydra.sweep.dir={sweep}"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while len(read_history(sweep / "1_seed=1")) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    first = job_metrics(sweep)
    assert first["0_seed=0"]["status"] == "completed"
    assert first["1_seed=1"]["status"] == "interrupted"
    assert "2_seed=2" not in first  # the sweep stopped with the interruption
    completed_job = (sweep / "0_seed=0" / "metrics.json")
    before = (completed_job.stat().st_mtime_ns, completed_job.read_text())

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    after = job_metrics(sweep)
    assert all(after[job]["status"] == "completed" for job in ("0_seed=0", "1_seed=1", "2_seed=2"))
    assert (completed_job.stat().st_mtime_ns, completed_job.read_text()) == before  # untouched
    assert "resuming from" in (sweep / "1_seed=1" / "regbench.log").read_text()
    epochs = [record["epoch"] for record in read_history(sweep / "1_seed=1")]
    assert epochs == list(range(1, 16))
