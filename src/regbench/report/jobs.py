"""The jobs of a sweep, read from their run folders (``regbench.run.folder``'s readers).

A job folder is a folder a run claimed (it holds ``spec.json``), or one an older regbench's Hydra
set up before the job started (it holds only ``.hydra/``): ``regbench.run.folder.is_job_folder``.
A job's experiment settings come from ``spec.json``; for the older ``.hydra/``-only folder, from
``.hydra/config.yaml`` by the same rule (``spec.experiment_settings``). A job without
``metrics.json`` is unfinished, one whose status is not ``completed`` failed; reading a job never
raises: what cannot be read becomes its status.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf

from regbench.config import one_line
from regbench.run.folder import RunFolder, find_job_folders
from regbench.run.spec import (
    HISTORY_FILE,
    METRICS_FILE,
    SEED_KEY,
    SPEC_FILE,
    STATUS,
    Status,
    experiment_settings,
)


class ReportError(Exception):
    """The report cannot be made (a user mistake such as a wrong folder): one line, exit 2."""


@dataclass
class Job:
    """One job folder of the sweep."""

    name: str  # folder relative to the sweep folder
    folder: Path
    status: str
    settings: Optional[dict[str, Any]]  # comparable settings; None when the config is unreadable
    seed: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    detail: str = ""  # why it failed or is unfinished
    overrides: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)  # other folders holding this run (duplicates.py)

    @property
    def completed(self) -> bool:
        return self.status == Status.completed.value

    @functools.cached_property
    def calibration(self) -> tuple[Optional[dict[str, Any]], str]:
        """(test_calibration.json or None, why a file that is there cannot be used, else ""),
        read once: the figures pool it and the report names the unusable ones."""
        return read_calibration(RunFolder(self.folder))


# What the report's figures read from test_calibration.json (run/recorder.py writes it).
CALIBRATION_KEYS = {"bin_edges", "bin_confidence", "bin_accuracy", "bin_count", "histogram_edges",
                    "histogram_correct", "histogram_incorrect"}


def read_calibration(folder: RunFolder) -> tuple[Optional[dict[str, Any]], str]:
    try:
        summary = folder.calibration()
    except (OSError, ValueError) as error:  # a truncated or torn file
        return None, one_line(error)
    if summary is not None and not CALIBRATION_KEYS <= summary.keys():
        return None, f"it lacks {', '.join(sorted(CALIBRATION_KEYS - summary.keys()))}"
    return summary, ""


def job_name(sweep: Path, folder: Path) -> str:
    return str(folder.relative_to(sweep))


def resolved_container(config: Any) -> dict[str, Any]:
    """The config as plain data, interpolations resolved. ``${hydra:...}`` cannot be resolved
    outside the run: then every value is compared as written, which is the same in every job."""
    try:
        return OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    except Exception:  # omegaconf raises several error types for unresolvable interpolations
        return OmegaConf.to_container(config, resolve=False, enum_to_str=True)


def read_config(folder: RunFolder) -> tuple[dict[str, Any], Any, list[str]]:
    """(experiment settings, seed, command-line overrides) of one job: the settings the run itself
    recorded in spec.json. An older regbench's job that never started has only .hydra/config.yaml,
    from which the same rule (``spec.experiment_settings``) derives them."""
    if folder.file(SPEC_FILE).is_file():
        identity = dict(folder.spec_json()["identity"])
        seed = identity.pop(SEED_KEY, None)
        settings = identity
    else:
        config = resolved_container(folder.hydra_config())
        settings, seed = experiment_settings(config), config.get(SEED_KEY)
    return settings, seed, folder.overrides() or []


def load_job(sweep: Path, path: Path) -> Job:
    """One job, whatever state it is in; problems become its status, never an exception."""
    name, folder = job_name(sweep, path), RunFolder(path)
    try:
        settings, seed, overrides = read_config(folder)
    except Exception as error:  # a torn or hand-edited config must not stop the report
        job = Job(name, path, Status.unreadable.value, None, detail=f"job settings: {one_line(error)}")
        with contextlib.suppress(OSError, ValueError):  # its metrics still belong in summary.csv
            job.metrics = folder.metrics() or {}
        return job
    job = Job(name, path, Status.unfinished.value, settings, seed, overrides=overrides)
    try:
        metrics = folder.metrics()
    except (OSError, ValueError) as error:
        job.status, job.detail = Status.unreadable.value, f"{METRICS_FILE}: {one_line(error)}"
        return job
    if metrics is None:
        epochs = settings.get("trainer.epochs", "?")
        job.detail = (f"no {METRICS_FILE} yet (running or interrupted): {len(folder.history())}"
                      f" of {epochs} epochs in {HISTORY_FILE}")
        return job
    job.metrics = metrics
    job.status = str(job.metrics.get(STATUS, "unknown"))
    if not job.completed:
        job.detail = " ".join(str(job.metrics.get("error", "")).split())
    return job


def load_jobs(sweep: Path) -> list[Job]:
    if not sweep.is_dir():
        raise ReportError(f"{sweep} does not exist or is not a folder")
    folders = find_job_folders(sweep)
    if not folders:
        raise ReportError(f"no job folders (folders holding {SPEC_FILE}) in {sweep}")
    return [load_job(sweep, folder) for folder in folders]


def load_sweeps(sweeps: Sequence[Path]) -> list[Job]:
    """The jobs of one or several sweep folders; with several, job names carry their folder."""
    unique = list({sweep.resolve(): sweep for sweep in sweeps}.values())
    jobs = []
    for sweep in unique:
        loaded = load_jobs(sweep)
        if len(unique) > 1:
            for job in loaded:
                job.name = str(sweep / job.name)
        jobs += loaded
    return jobs
