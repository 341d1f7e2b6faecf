"""The end of a sweep: one summary of its jobs, the report command, and the exit status.

A failed job does not stop a sweep (train.fail returns instead of raising), so Hydra finishes
every job; this callback then counts the jobs' statuses from their metrics.json files, prints the
sweep folder and the report command, and exits non-zero when any job did not complete.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from regbench.spec import METRICS_FILE, SPEC_FILE, STATUS, Status


def job_statuses(sweep_dir: Path) -> dict[str, str]:
    """Job folder (relative to the sweep) -> status, for every folder a job of regbench claimed."""
    statuses = {}
    for spec in sorted(sweep_dir.rglob(SPEC_FILE)):
        folder = spec.parent
        try:
            status = json.loads((folder / METRICS_FILE).read_text()).get(STATUS, Status.unreadable.value)
        except FileNotFoundError:
            status = Status.unfinished.value
        except (OSError, ValueError, AttributeError):
            status = Status.unreadable.value
        statuses[str(folder.relative_to(sweep_dir))] = str(status)
    return statuses


def summary_lines(sweep_dir: Path, statuses: dict[str, str]) -> list[str]:
    counts = Counter(statuses.values())
    tally = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    lines = [f"\nsweep finished: {len(statuses)} jobs ({tally or 'none ran'})"]
    not_done = [name for name, status in statuses.items() if status != Status.completed.value]
    if not_done:
        lines.append(f"not completed: {', '.join(f'{name} ({statuses[name]})' for name in not_done)}")
    lines += [f"sweep folder: {sweep_dir}", f"report:       python -m regbench.report {sweep_dir}"]
    return lines


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        statuses = job_statuses(sweep_dir)
        print("\n".join(summary_lines(sweep_dir, statuses)))
        if any(status != Status.completed.value for status in statuses.values()):
            sys.exit(1)
