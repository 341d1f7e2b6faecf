"""A run folder, read and written in one place, and its rules: one process at a time, one experiment
per folder, finished work kept.

``RunFolder.claim`` takes an exclusive lock (a second process on the same folder is refused, not
interleaved), removes temporary files a killed process left behind, and checks ``spec.json``: a
folder is resumed or reported as completed only for the identity it was created with. Until the
claim succeeds nothing in the folder is written, so a refusal never touches finished results.

The readers (``spec_json``, ``metrics``, ``status``, ``history``, ``overrides``, ``calibration``)
are what the sweep summary, the report and ``regbench.fold`` use; a **job folder** is a folder a
run claimed (it holds ``spec.json``), or one an older regbench's Hydra set up before the job
started (it holds only ``.hydra/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from regbench.config import ConfigError
from regbench.files import TEMPORARY_GLOB, atomic_write_json, exclusive_lock
from regbench.run.spec import (
    CALIBRATION_FILE,
    CHECKPOINT_FILE,
    COMPLETED_KEYS,
    HISTORY_FILE,
    HYDRA_CONFIG_FILE,
    HYDRA_HYDRA_FILE,
    HYDRA_OVERRIDES_FILE,
    HYDRA_SUBDIR,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    SPEC_FILE,
    STATUS,
    RunSpec,
    Status,
    different_run_message,
    first_difference,
)


def load_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; OSError or ValueError (one line) when it cannot be read."""
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or a ConfigError saying in one line why it cannot be read."""
    try:
        return load_json_object(path)
    except (OSError, ValueError) as error:
        reason = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else \
            " ".join(str(error).split())
        raise ConfigError(f"{path} cannot be read ({reason}); it is the {what} of this run folder: "
                          f"fix or delete it, or use a new hydra.run.dir") from None


def is_job_folder(path: Path) -> bool:
    return (path / SPEC_FILE).is_file() or (path / HYDRA_SUBDIR).is_dir()


def natural_key(name: str) -> tuple:
    """Job folders in the order of their job number, the number that starts their name (``2``,
    ``10_regularizer=none,seed=1``): 2 before 10; names without a number alphabetically after."""
    def part_key(part: str) -> tuple:
        number = re.match(r"\d+", part)
        return (0, int(number.group()), part[number.end():]) if number else (1, 0, part)
    return tuple(part_key(part) for part in Path(name).parts)


def find_job_folders(root: Path) -> list[Path]:
    """Every job folder under ``root`` (a sweep folder), in job-number order."""
    markers = [*root.rglob(SPEC_FILE), *root.rglob(HYDRA_SUBDIR)]
    folders = {marker.parent for marker in markers if is_job_folder(marker.parent)}
    return sorted(folders, key=lambda folder: natural_key(str(folder.relative_to(root))))


class FolderRefused(ConfigError):
    """A run folder not taken (another run's, in use, unreadable): nothing in it was written."""


class RunFolder:
    """One run's folder (Hydra's run or job output folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.claimed = False
        # metrics.json of a completed run of this spec, read while claiming (None: not completed).
        self.completed: Optional[dict[str, Any]] = None

    def file(self, name: str) -> Path:
        return self.path / name

    @contextlib.contextmanager
    def claim(self, spec: RunSpec) -> Iterator["RunFolder"]:
        """Hold the folder for ``spec`` (lock, identity check, spec.json) while the block runs."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.lock():
            try:
                self.check_identity(spec)
                self.completed = self.completed_metrics()  # an unreadable one is refused, untouched
            except ConfigError as error:
                raise FolderRefused(str(error)) from None
            self.remove_stale_temporaries()
            if not self.file(SPEC_FILE).exists():
                atomic_write_json(self.file(SPEC_FILE), spec.as_json())
            self.claimed = True
            try:
                yield self
            finally:
                self.claimed = False

    def holds_only_a_new_log(self) -> bool:
        """Whether the folder holds nothing but what Hydra made for this command (its log): a run
        refused before it trained leaves no folder behind (``discard``)."""
        return self.path.is_dir() and all(path.name == LOG_FILE for path in self.path.iterdir())

    def discard(self) -> None:
        """Remove the folder of a run refused before it trained, when it holds nothing but the
        files a refused run writes (its spec, its failure, its log, its .hydra/ configs)."""
        refused_run_files = {SPEC_FILE, METRICS_FILE, LOG_FILE, LOCK_FILE, HYDRA_SUBDIR}
        if not self.path.is_dir() or any(p.name not in refused_run_files for p in self.path.iterdir()):
            return
        for name in (SPEC_FILE, METRICS_FILE, LOG_FILE, LOCK_FILE):
            with contextlib.suppress(OSError):
                self.file(name).unlink()
        hydra_folder = self.file(HYDRA_SUBDIR)
        for name in (HYDRA_CONFIG_FILE, HYDRA_HYDRA_FILE, HYDRA_OVERRIDES_FILE):
            with contextlib.suppress(OSError):
                (hydra_folder / name).unlink()
        for folder in (hydra_folder, self.path):
            with contextlib.suppress(OSError):
                folder.rmdir()

    def lock(self) -> contextlib.AbstractContextManager:
        """The folder's lock; a second process on the same folder is refused, not interleaved."""
        def refuse() -> None:
            raise FolderRefused(f"{self.path} is in use by another regbench process; wait for it to "
                                f"finish, or use another hydra.run.dir")
        return exclusive_lock(self.file(LOCK_FILE), when_busy=refuse, remove=True)

    def check_identity(self, spec: RunSpec) -> None:
        """Refuse a folder created for another experiment (or one whose spec is unknown but
        which already holds finished results)."""
        spec_path = self.file(SPEC_FILE)
        if spec_path.exists():
            saved = read_json_file(spec_path, "specification").get("identity")
            if not isinstance(saved, dict) or not saved:
                raise ConfigError(f"{spec_path} holds no run identity (found {json.dumps(saved)}); "
                                  f"it is the specification of this run folder: fix or delete it, "
                                  f"or use a new hydra.run.dir")
            difference = first_difference(saved, spec.identity)
            if difference is not None:
                raise ConfigError(different_run_message(self.path, *difference))
        elif self.completed_metrics() is not None:
            raise ConfigError(f"{self.path} holds a completed run without {SPEC_FILE} (written by "
                              f"an older regbench), so it cannot be checked to be this experiment; "
                              f"use a new hydra.run.dir")

    def remove_stale_temporaries(self) -> None:
        """Half-written files of a process killed during an atomic write (``files.TEMPORARY_GLOB``:
        only regbench's own temporaries, never a user's ``.*.tmp`` file)."""
        for temporary in self.path.glob(TEMPORARY_GLOB):
            with contextlib.suppress(OSError):
                temporary.unlink()

    def completed_metrics(self) -> Optional[dict[str, Any]]:
        """metrics.json when it says completed, else None."""
        path = self.file(METRICS_FILE)
        if not path.exists():
            return None
        metrics = read_json_file(path, "result")
        if metrics.get(STATUS) != Status.completed.value:
            return None
        # null stands for a NaN or infinite value (files.json_ready).
        missing = [key for key in COMPLETED_KEYS
                   if not isinstance(metrics.get(key, ""), (int, float, type(None)))]
        if missing:
            raise ConfigError(f"{path} says completed but has no number for {', '.join(missing)}; "
                              f"it is the result of this run folder: fix or delete it, or use a "
                              f"new hydra.run.dir")
        return metrics

    @property
    def checkpoint(self) -> Path:
        return self.file(CHECKPOINT_FILE)

    def write_failure(self, metrics: Mapping[str, Any]) -> None:
        """Record a failure, but only in a folder this run holds: a refused run never writes. A
        record that cannot be written (an unwritable folder) must not hide the error itself."""
        if self.claimed:
            with contextlib.suppress(OSError):
                atomic_write_json(self.file(METRICS_FILE), metrics)

    def save_hydra_configs(self, cfg: Any, hydra_cfg: Any) -> None:
        """``.hydra/`` as Hydra writes it; regbench writes it itself (``hydra.output_subdir: null``)
        once the folder is claimed, so a refused rerun never overwrites a finished run's config."""
        from omegaconf import OmegaConf

        folder = self.file(HYDRA_SUBDIR)
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, folder / HYDRA_CONFIG_FILE)
        OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / HYDRA_HYDRA_FILE)
        OmegaConf.save(hydra_cfg.overrides.task, folder / HYDRA_OVERRIDES_FILE)

    # --- readers: OSError or ValueError when a file exists but cannot be read -------------------
    def spec_json(self) -> dict[str, Any]:
        return load_json_object(self.file(SPEC_FILE))

    def metrics(self) -> Optional[dict[str, Any]]:
        """metrics.json, or None before the run wrote one."""
        path = self.file(METRICS_FILE)
        return load_json_object(path) if path.is_file() else None

    def status(self) -> str:
        """The run's status: metrics.json's, else unfinished (none yet) or unreadable."""
        try:
            metrics = self.metrics()
        except (OSError, ValueError):
            return Status.unreadable.value
        if metrics is None:
            return Status.unfinished.value
        return str(metrics.get(STATUS, Status.unreadable.value))

    def history(self) -> list[dict[str, Any]]:
        """history.jsonl: one record per finished epoch ([] before the first)."""
        path = self.file(HISTORY_FILE)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def overrides(self) -> Optional[list[str]]:
        """The command-line overrides the run was started with (.hydra/overrides.yaml), or None
        when the folder has none (a run composed in-process)."""
        from omegaconf import OmegaConf

        path = self.file(HYDRA_SUBDIR) / HYDRA_OVERRIDES_FILE
        if not path.is_file():
            return None
        overrides = OmegaConf.load(path)
        if not OmegaConf.is_list(overrides) or not all(isinstance(o, str) for o in overrides):
            raise ValueError(f"{path} is not a list of key=value lines")
        return list(overrides)

    def hydra_config(self) -> Any:
        """.hydra/config.yaml, the composed config (a DictConfig, interpolations unresolved)."""
        from omegaconf import OmegaConf

        return OmegaConf.load(self.file(HYDRA_SUBDIR) / HYDRA_CONFIG_FILE)

    def calibration(self) -> Optional[dict[str, Any]]:
        """test_calibration.json (reliability bins and histograms), or None when absent."""
        path = self.file(CALIBRATION_FILE)
        return load_json_object(path) if path.is_file() else None
