"""The report in MLflow: when a sweep's runs were logged with ``logger=mlflow``, one parent run per
sweep holds the report's tables and pages as artifacts, and every seed run is nested under it
(MLflow's ``mlflow.parentRunId`` tag, set on the runs after the fact).

The parent run's id is kept in the sweep folder (``mlflow_report.json``), so a second report of
the same sweep updates the same parent run. Sweeps without MLflow runs do nothing here and never
import mlflow. A store that cannot be reached is one warning: the report's files are written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

from regbench.files import atomic_write_json
from regbench.run.mlflow_logger import ENV_DEFAULTS, read_run_file, run_exists

PARENT_FILE = "mlflow_report.json"  # in the sweep folder: the parent run per tracking store
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs


def logged_runs(folders: Iterable[Path]) -> dict[tuple[str, str], list[str]]:
    """{(tracking URI, experiment id): [run ids]} of the job folders that hold an MLflow run file
    (run/mlflow_logger.py RUN_FILE)."""
    runs: dict[tuple[str, str], list[str]] = {}
    for folder in folders:
        found = read_run_file(folder)
        if found and isinstance(found.get("tracking_uri"), str):
            key = (found["tracking_uri"], str(found.get("experiment_id", "0")))
            runs.setdefault(key, []).append(found["run_id"])
    return runs


def parent_ids(sweep: Path) -> dict[str, str]:
    try:
        found = json.loads((sweep / PARENT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def log_report(sweep: Path, folders: Sequence[Path], files: Iterable[Path]) -> Optional[str]:
    """Log the report's files to a parent run of the sweep's MLflow runs and nest them under it;
    returns a line for the user (None when no job used MLflow)."""
    runs = logged_runs(folders)
    if not runs:
        return None
    import os

    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient

    parents = parent_ids(sweep)
    lines = []
    for (uri, experiment_id), children in runs.items():
        client = MlflowClient(tracking_uri=uri)
        try:
            parent = parents.get(uri)
            if parent is None or not run_exists(client, parent) or \
                    client.get_run(parent).info.lifecycle_stage != "active":
                parent = client.create_run(experiment_id, run_name=f"report {sweep.name}",
                                           tags={"regbench.sweep": str(sweep)}).info.run_id
            for path in files:
                if path.is_file():
                    client.log_artifact(parent, str(path))
            for child in children:
                client.set_tag(child, PARENT_TAG, parent)
            client.set_terminated(parent, status="FINISHED")
        except Exception as error:  # transport or store errors: the report's files are written
            lines.append(f"warning: MLflow at {uri} could not take the report "
                         f"({str(error).splitlines()[0][:200] if str(error) else type(error).__name__})")
            continue
        parents[uri] = parent
        lines.append(f"MLflow: report run {parent} at {uri}, {len(children)} run(s) nested under it")
    atomic_write_json(sweep / PARENT_FILE, parents)
    return "\n".join(lines)
