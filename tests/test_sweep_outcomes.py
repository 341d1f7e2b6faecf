"""What a sweep's summary counts (sweep.py): the jobs of this invocation and what they did, a relaunch
finding its job folders whatever the order of the values (cli/hydra_hooks.py), and Ctrl-C on a
parallel sweep keeping every started job's finished epochs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import read_history, read_metrics, run_cli
from regbench.cli.hydra_hooks import CHOSEN, chosen_job_dir, existing_job_dir, job_dir
from regbench.sweep import (
    OUTCOMES_FILE,
    SweepInterrupted,
    SweepSummary,
    append_line,
    interruption,
    job_outcomes,
    read_records,
)

FAST = ["trainer.progress=false", "trainer.num_threads=1", "evaluation.figures=false"]


# --- the outcomes file --------------------------------------------------------------------------

def test_a_job_counts_with_its_last_line_of_this_invocation_only(tmp_path):
    path = tmp_path / OUTCOMES_FILE
    for job, outcome in [("0_seed=0", "started"), ("0_seed=0", "interrupted"),  # requeued...
                         ("1_seed=1", "started"), ("0_seed=0", "started"),
                         ("0_seed=0", "completed"), ("2_seed=2", "not started")]:
        append_line(path, {"invocation": "this", "job": job, "outcome": outcome})
    append_line(path, {"invocation": "earlier", "job": "10_seed=9", "outcome": "refused"})
    with path.open("a") as file:
        file.write('{"invocation": "this", "job": "9_se')  # a writer killed mid-line
    records = read_records(path, "this")
    assert job_outcomes(records) == {"0_seed=0": "completed", "1_seed=1": "unfinished",
                                     "2_seed=2": "not started"}
    assert interruption(records) is None
    append_line(path, {"invocation": "this", "interrupted_by": "SIGTERM"})
    assert interruption(read_records(path, "this")) == "SIGTERM"
    assert read_records(tmp_path / "missing.jsonl", "this") == []


def test_lines_appended_by_processes_at_once_never_interleave(tmp_path):
    path, writers, lines = tmp_path / OUTCOMES_FILE, 4, 300
    code = ("import sys; from pathlib import Path; from regbench.sweep import append_line\n"
            "for i in range(int(sys.argv[3])): append_line(Path(sys.argv[1]), "
            "{'invocation': 'x', 'job': sys.argv[2] * 200, 'outcome': str(i)})")
    processes = [subprocess.Popen([sys.executable, "-c", code, str(path), str(n), str(lines)])
                 for n in range(writers)]
    assert all(process.wait(timeout=120) == 0 for process in processes)
    assert len([line for line in path.read_text().splitlines() if line]) == writers * lines
    records = read_records(path, "x")  # every line whole
    assert len(records) == writers * lines
    for n in range(writers):
        assert [r["outcome"] for r in records if r["job"] == str(n) * 200] == [str(i) for i in range(lines)]


def test_the_parent_notes_the_first_signal_and_stops_waiting_at_the_third(tmp_path):
    parent = SweepSummary()
    parent.invocation, parent.parent_pid, parent.sweep_dir = "this", os.getpid(), tmp_path
    parent.on_signal(signal.SIGINT, None)
    parent.on_signal(signal.SIGTERM, None)  # noted once: the jobs are still waited for
    with pytest.raises(SweepInterrupted) as stopped:
        parent.on_signal(signal.SIGINT, None)
    assert stopped.value.line == f"regbench: sweep stopped by SIGINT without waiting for its jobs; see {tmp_path}"
    assert read_records(tmp_path / OUTCOMES_FILE, "this") == [{"invocation": "this", "interrupted_by": "SIGINT"}]


# --- job folders ---------------------------------------------------------------------------------

def test_a_relaunched_job_finds_its_folder_whatever_its_number(tmp_path):
    for name in ("3_regularizer=none", "1_regularizer=none", "0_regularizer=dropout",
                 "2_regularizer=none,seed=1", job_dir(7, "x=" + "a" * 200)):
        (tmp_path / name).mkdir()
    (tmp_path / "0_regularizer=l2").write_text("a file, not a job folder")
    assert existing_job_dir(tmp_path, "regularizer=none") == "1_regularizer=none"  # the lowest
    assert existing_job_dir(tmp_path, "regularizer=dropout") == "0_regularizer=dropout"
    assert existing_job_dir(tmp_path, "regularizer=l2") is None
    assert existing_job_dir(tmp_path, "seed=1") is None  # a longer name is another job
    # A name capped with a hash is cut after its number: found again under another number width.
    assert existing_job_dir(tmp_path, "x=" + "a" * 200) == job_dir(7, "x=" + "a" * 200)
    assert job_dir(12, "x=" + "a" * 200) != job_dir(7, "x=" + "a" * 200)
    assert existing_job_dir(tmp_path, "") is None  # a folder named by its number says nothing
    assert existing_job_dir(tmp_path / "missing", "regularizer=none") is None


def test_a_job_keeps_the_folder_it_was_given_once_another_appears(tmp_path):
    CHOSEN.clear()
    assert chosen_job_dir(tmp_path, 5, "seed=0") == "5_seed=0"
    (tmp_path / "2_seed=0").mkdir()
    assert chosen_job_dir(tmp_path, 5, "seed=0") == "5_seed=0"  # read again: the same folder
    assert chosen_job_dir(tmp_path, 6, "seed=0") == "2_seed=0"


# --- end to end ---------------------------------------------------------------------------------

def summary_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("sweep finished"))


@pytest.mark.slow
def test_a_rerun_whose_jobs_are_all_refused_exits_1_and_counts_them_refused(tmp_path):
    sweep = ["-m", "regularizer=none,dropout", *FAST, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = run_cli([*sweep, "trainer.epochs=1"], cwd=tmp_path)
    assert first.returncode == 0 and summary_line(first.stdout) == "sweep finished: 2 jobs (2 completed)"
    longer = run_cli([*sweep, "trainer.epochs=2"], cwd=tmp_path)
    assert longer.returncode == 1, longer.stderr
    assert summary_line(longer.stdout) == "sweep finished: 2 jobs (2 refused)"
    assert "Traceback" not in longer.stderr and longer.stderr.count("belongs to a different run") == 2
    again = run_cli([*sweep, "trainer.epochs=1"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert summary_line(again.stdout) == "sweep finished: 2 jobs (2 already completed)"


@pytest.mark.slow
def test_a_relaunch_with_the_values_in_another_order_trains_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["trainer.epochs=1", *FAST, f"hydra.sweep.dir={sweep}"]
    assert run_cli(["-m", "regularizer=none,dropout", *common], cwd=tmp_path).returncode == 0
    swapped = run_cli(["-m", "regularizer=dropout,none", *common], cwd=tmp_path)
    assert swapped.returncode == 0, swapped.stderr
    assert summary_line(swapped.stdout) == "sweep finished: 2 jobs (2 already completed)"
    assert sorted(path.parent.name for path in sweep.glob("*/spec.json")) == [
        "0_regularizer=none", "1_regularizer=dropout"]


def interrupt_when_training(args: list[str], cwd: Path, jobs: list[Path], to_group: bool):
    """The sweep in its own process group, sent SIGINT once every job of ``jobs`` finished two
    epochs: to the whole group as Ctrl-C does, or to the parent alone as ``kill`` does. Returns
    the finished process and the epochs each job had finished by then."""
    process = subprocess.Popen([sys.executable, "-m", "regbench", *args], cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and \
            min(len(read_history(job)) for job in jobs) < 2:
        time.sleep(0.01)
    finished = {job.name: len(read_history(job)) for job in jobs}
    (os.killpg if to_group else os.kill)(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), finished


@pytest.mark.slow
@pytest.mark.parametrize("launcher, seeds, n_jobs, to_group, tally", [
    # Ctrl-C; an idle worker (dying, it had loky kill the others)
    ("joblib", "0,1", 3, True, "2 interrupted"),
    # SIGINT to the parent alone; a job waits (the default launcher, built on joblib's)
    ("parallel", "0,1,2", 2, False, "2 interrupted, 1 not started"),
])
def test_ctrl_c_on_a_parallel_sweep_keeps_every_started_jobs_finished_epochs(
        tmp_path, launcher, seeds, n_jobs, to_group, tally):
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra/launcher={launcher}", f"hydra.launcher.n_jobs={n_jobs}", f"seed={seeds}",
            "trainer.epochs=300", "model.hidden_sizes=[256,256]", *FAST, f"hydra.sweep.dir={sweep}"]
    result, finished = interrupt_when_training(args, tmp_path, [sweep / "0_seed=0", sweep / "1_seed=1"],
                                               to_group)
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"regbench: sweep interrupted by SIGINT ({tally});")
    assert summary_line(result.stdout) == f"sweep finished: {len(seeds.split(','))} jobs ({tally})"
    for job, epochs in finished.items():
        assert read_metrics(sweep / job)["status"] == "interrupted"
        kept = torch.load(sweep / job / "last.pt", weights_only=True)["epoch"]
        assert kept >= epochs and len(read_history(sweep / job)) == kept
    assert not (sweep / "2_seed=2" / "metrics.json").exists()
