"""The same command resumes (cli/resume.py): a single run started without hydra.run.dir continues the
newest interrupted run of the same experiment and seed under outputs/runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_history, read_metrics, run_cli
from regbench.cli.resume import interrupted_run, new_run_dir
from regbench.run.spec import CHECKPOINT_FILE, METRICS_FILE, SPEC_FILE

ARGS = ["trainer.epochs=8", "trainer.progress=false", "trainer.num_threads=1",
        "trainer.checkpoint_interval_s=0", "evaluation.figures=false"]
IDENTITY = {"seed": 0, "regularizer": {}}


def run_folder(root: Path, name: str, identity: dict, status: str | None, checkpoint: bool) -> Path:
    folder = root / "2026-12-03" / name
    folder.mkdir(parents=True)
    (folder / SPEC_FILE).write_text(json.dumps({"identity": identity}))
    if status is not None:
        (folder / METRICS_FILE).write_text(json.dumps({"status": status}))
    if checkpoint:
        (folder / CHECKPOINT_FILE).write_bytes(b"")
    return folder


def test_the_newest_interrupted_run_of_the_same_identity_is_found(tmp_path):
    run_folder(tmp_path, "10-00-00-000000", IDENTITY, "interrupted", True)
    newest = run_folder(tmp_path, "11-00-00-000000", IDENTITY, "interrupted", True)
    run_folder(tmp_path, "12-00-00-000000", {**IDENTITY, "seed": 1}, "interrupted", True)
    assert interrupted_run(tmp_path, IDENTITY) == newest


@pytest.mark.parametrize("status,checkpoint,found", [
    ("interrupted", True, True),
    (None, True, True),          # killed outright: no metrics.json, a last.pt
    (None, False, False),        # nothing finished: nothing to continue
    ("completed", True, False),  # the same command after a completed run trains a new one
    ("failed", True, False),
    ("diverged", True, False),
])
def test_only_an_interrupted_or_killed_run_is_continued(tmp_path, status, checkpoint, found):
    folder = run_folder(tmp_path, "10-00-00-000000", IDENTITY, status, checkpoint)
    assert interrupted_run(tmp_path, IDENTITY) == (folder if found else None)


def test_a_run_folder_named_with_its_overrides_is_found_next_to_older_names(tmp_path):
    old = run_folder(tmp_path, "10-00-00-000000", IDENTITY, "interrupted", True)
    assert interrupted_run(tmp_path, IDENTITY) == old
    new = run_folder(tmp_path, "11-00-00_regularizer=none,seed=0", IDENTITY, "interrupted", True)
    run_folder(tmp_path, "12-00-00_seed=1", {**IDENTITY, "seed": 1}, "interrupted", True)
    assert interrupted_run(tmp_path, IDENTITY) == new  # the newest by its time
    newer = run_folder(tmp_path, "11-30-00-000000", IDENTITY, None, True)
    assert interrupted_run(tmp_path, IDENTITY) == newer


def test_a_new_run_folder_is_named_by_its_time_and_overrides(tmp_path):
    root = str(tmp_path / "outputs/runs")
    folder = new_run_dir(root, "2026-12-03/12-03-45", "regularizer=dropout,seed=1")
    assert folder == f"{root}/2026-12-03/12-03-45_regularizer=dropout,seed=1"
    assert new_run_dir(root, "2026-12-03/12-03-45", "") == f"{root}/2026-12-03/12-03-45"
    listed = new_run_dir(root, "2026-12-03/12-03-45", "model.hidden_sizes=[64,64],x='a b'")
    assert listed.endswith("/12-03-45_model.hidden_sizes=64+64,x=_a_b_")
    many = ",".join(f"key{i}=value{i}" for i in range(20))
    long = Path(new_run_dir(root, "2026-12-03/12-03-45", many))
    assert len(long.name) == 80 and long.name.startswith("12-03-45_key0=value0,")
    Path(folder).mkdir(parents=True)  # the same command again within the same second
    assert new_run_dir(root, "2026-12-03/12-03-45", "regularizer=dropout,seed=1") == f"{folder}-2"


def interrupt_after(cwd: Path, epochs: int) -> subprocess.CompletedProcess:
    """The CLI with ARGS (no hydra.run.dir), SIGINT once ``epochs`` epochs are in its history."""
    process = subprocess.Popen([sys.executable, "-m", "regbench", *ARGS], cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and not any(
            len(read_history(folder)) >= epochs for folder in (cwd / "outputs/runs").glob("*/*")):
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_folders(cwd: Path) -> list[Path]:
    return sorted((cwd / "outputs/runs").glob("*/*"))


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict:
    """One user's commands in one folder, each after the one before: the run stopped by Ctrl-C
    after 2 epochs; the same command with trainer.resume=false (a new run, the interrupted one left
    as it was); the same command (it resumes the interrupted run); another experiment. The
    interrupted start is the costly part of both tests, so they share it."""
    cwd = tmp_path_factory.mktemp("resume")
    interrupted = interrupt_after(cwd, epochs=2)
    (folder,) = run_folders(cwd)
    stopped = read_metrics(folder)
    started_over = run_cli([*ARGS, "trainer.resume=false"], cwd=cwd)
    after_start_over = {"folders": run_folders(cwd), "interrupted": read_metrics(folder)}
    resumed = run_cli(ARGS, cwd=cwd)
    after_resume = run_folders(cwd)
    fresh = run_cli([*ARGS, "trainer.epochs=1"], cwd=cwd)
    return {"cwd": cwd, "interrupted": interrupted, "folder": folder, "stopped": stopped,
            "started_over": started_over, "after_start_over": after_start_over,
            "resumed": resumed, "after_resume": after_resume, "fresh": fresh}


@pytest.mark.slow
def test_the_same_command_after_ctrl_c_resumes_in_the_same_folder(commands):
    interrupted, folder, cwd = commands["interrupted"], commands["folder"], commands["cwd"]
    assert interrupted.returncode == 130, interrupted.stderr
    assert "run the same command again to resume" in interrupted.stderr
    assert folder.name.endswith("_trainer.epochs=8")  # result-neutral overrides left out
    done = commands["stopped"]["epochs"]

    resumed = commands["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming the interrupted run in {folder.relative_to(cwd)}" in resumed.stderr
    assert f"after epoch {done}" in resumed.stdout + resumed.stderr
    # The interrupted run's folder, not the completed one trainer.resume=false started; no other.
    assert commands["after_resume"] == commands["after_start_over"]["folders"]
    assert read_metrics(folder)["status"] == "completed" and read_metrics(folder)["epochs"] == 8

    fresh = commands["fresh"]  # another experiment: a new folder
    assert fresh.returncode == 0 and "resuming" not in fresh.stderr
    assert len(run_folders(cwd)) == 3


@pytest.mark.slow
def test_resume_false_starts_a_new_folder(commands):
    started_over, folder = commands["started_over"], commands["folder"]
    assert started_over.returncode == 0 and "resuming" not in started_over.stderr
    folders = commands["after_start_over"]["folders"]
    assert len(folders) == 2 and folder in folders
    (new,) = (f for f in folders if f != folder)
    assert read_metrics(new)["status"] == "completed" and read_metrics(new)["epochs"] == 8
    assert commands["after_start_over"]["interrupted"] == commands["stopped"]  # left as it was
