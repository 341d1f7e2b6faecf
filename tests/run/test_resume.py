"""Interrupting a run (SIGTERM, as a scheduler pre-empts) and running it again gives exactly the
metrics of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_history, read_metrics, run_cli, without_timings

pytestmark = pytest.mark.slow

ARGS = ["trainer.epochs=12", "trainer.progress=false", "trainer.num_threads=1",
        "model.hidden_sizes=[256,256]", "evaluation.figures=false"]
def start_and_terminate(run_dir: Path, cwd: Path, after_epochs: int,
                        extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Start the CLI, send SIGTERM once ``after_epochs`` epochs are in history.jsonl."""
    process = subprocess.Popen([sys.executable, "-m", "regbench", *ARGS, *extra,
                                f"hydra.run.dir={run_dir}"],
                               cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while len(read_history(run_dir)) < after_epochs and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_sigterm_then_rerun_matches_an_uninterrupted_run(tmp_path):
    reference = run_cli([*ARGS, f"hydra.run.dir={tmp_path / 'reference'}"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    run_dir = tmp_path / "interrupted"
    interrupted = start_and_terminate(run_dir, tmp_path, after_epochs=3)
    assert interrupted.returncode == 128 + signal.SIGTERM, interrupted.stderr
    assert "interrupted by SIGTERM" in interrupted.stderr and "to resume" in interrupted.stderr
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "interrupted"
    epochs_done = metrics["epochs"]
    assert 3 <= epochs_done < 12
    assert (run_dir / "last.pt").is_file()
    assert len(read_history(run_dir)) == epochs_done

    resumed = run_cli([*ARGS, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {epochs_done}" in resumed.stdout + resumed.stderr
    assert without_timings(read_metrics(run_dir)) == without_timings(read_metrics(tmp_path / "reference"))
    assert [without_timings(r) for r in read_history(run_dir)] == \
        [without_timings(r) for r in read_history(tmp_path / "reference")]

    again = run_cli([*ARGS, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stdout + again.stderr
