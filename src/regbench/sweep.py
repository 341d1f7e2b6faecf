"""The end of a sweep: one summary of its jobs, the report command, and the exit status.

A failed job does not stop a sweep (train.fail returns instead of raising), so Hydra finishes
every job; this callback then counts the jobs' statuses from their metrics.json files (written by
the jobs themselves, so any launcher: basic, joblib, submitit, a cluster), writes the sweep's
HParams columns, prints the sweep folder, the report and TensorBoard commands, and exits non-zero
when any job did not complete.
"""

from __future__ import annotations

import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from regbench.run.folder import RunFolder, find_job_folders
from regbench.run.spec import Status


def job_statuses(sweep_dir: Path) -> dict[str, str]:
    """Job folder (relative to the sweep) -> status, for every job folder of the sweep."""
    return {str(folder.relative_to(sweep_dir)): RunFolder(folder).status()
            for folder in find_job_folders(sweep_dir)}


def summary_lines(sweep_dir: Path, statuses: dict[str, str]) -> list[str]:
    counts = Counter(statuses.values())
    tally = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    lines = [f"\nsweep finished: {len(statuses)} jobs ({tally or 'none ran'})"]
    not_done = [name for name, status in statuses.items() if status != Status.completed.value]
    if not_done:
        lines.append(f"not completed: {', '.join(f'{name} ({statuses[name]})' for name in not_done)}")
    # As configured (hydra.sweep.dir): relative to the working directory, which no launcher
    # changes (hydra.job.chdir=false), or absolute as typed; quoted for the shell when needed.
    shown = shlex.quote(str(sweep_dir))
    lines += [f"sweep folder: {sweep_dir}",
              f"report:       python -m regbench.report {shown}",
              f"see curves:   tensorboard --logdir {shown}"]
    return lines


def write_hparams(sweep_dir: Path) -> None:
    """The sweep's HParams columns (report.write_sweep_hparams), so TensorBoard's HParams tab is
    right before any report is made. Never fails the sweep: it is a convenience."""
    from regbench.report.events import write_sweep_hparams
    from regbench.report.jobs import ReportError, load_jobs

    try:
        write_sweep_hparams(sweep_dir, load_jobs(sweep_dir))
    except (ReportError, OSError, ValueError) as error:
        print(f"(HParams summary not written: {error})", file=sys.stderr)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        statuses = job_statuses(sweep_dir)
        if statuses:
            write_hparams(sweep_dir)
        print("\n".join(summary_lines(sweep_dir, statuses)), flush=True)
        if any(status != Status.completed.value for status in statuses.values()):
            sys.exit(1)
