"""A run folder's rules: one process at a time, one experiment per folder, finished work kept.

``RunFolder.claim`` takes an exclusive lock (a second process on the same folder is refused, not
interleaved), removes temporary files a killed process left behind, and checks ``spec.json``: a
folder is resumed or reported as completed only for the identity it was created with. Until the
claim succeeds nothing in the folder is written, so a refusal never touches finished results.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from regbench.config import ConfigError
from regbench.files import atomic_write_json, exclusive_lock
from regbench.run.checkpoint import different_run_message
from regbench.run.spec import (
    CHECKPOINT_FILE,
    LOCK_FILE,
    METRICS_FILE,
    SPEC_FILE,
    STATUS,
    RunSpec,
    Status,
    first_difference,
)


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or one line saying why it cannot be read."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        reason = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else \
            " ".join(str(error).split())
        raise ConfigError(f"{path} cannot be read ({reason}); it is the {what} of this run folder: "
                          f"fix or delete it, or use a new hydra.run.dir") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} is not a JSON object; it is the {what} of this run folder: fix or "
                          f"delete it, or use a new hydra.run.dir")
    return value


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
            self.check_identity(spec)
            self.completed = self.completed_metrics()  # an unreadable one is refused here, untouched
            self.remove_stale_temporaries()
            if not self.file(SPEC_FILE).exists():
                atomic_write_json(self.file(SPEC_FILE), spec.as_json())
            self.claimed = True
            try:
                yield self
            finally:
                self.claimed = False

    def lock(self) -> contextlib.AbstractContextManager:
        """The folder's lock; a second process on the same folder is refused, not interleaved."""
        def refuse() -> None:
            raise ConfigError(f"{self.path} is in use by another regbench process; wait for it to "
                              f"finish, or use another hydra.run.dir")
        return exclusive_lock(self.file(LOCK_FILE), when_busy=refuse)

    def check_identity(self, spec: RunSpec) -> None:
        """Refuse a folder created for another experiment (or one whose spec is unknown but
        which already holds finished results)."""
        spec_path = self.file(SPEC_FILE)
        if spec_path.exists():
            saved = read_json_file(spec_path, "specification").get("identity", {})
            difference = first_difference(saved, spec.identity)
            if difference is not None:
                raise ConfigError(different_run_message(self.path, *difference))
        elif self.completed_metrics() is not None:
            raise ConfigError(f"{self.path} holds a completed run without {SPEC_FILE} (written by "
                              f"an older regbench), so it cannot be checked to be this experiment; "
                              f"use a new hydra.run.dir")

    def remove_stale_temporaries(self) -> None:
        """Half-written files of a process killed during an atomic write (``.<name>.*.tmp``)."""
        for temporary in self.path.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                temporary.unlink()

    def completed_metrics(self) -> Optional[dict[str, Any]]:
        """metrics.json when it says completed, else None."""
        path = self.file(METRICS_FILE)
        if not path.exists():
            return None
        metrics = read_json_file(path, "result")
        return metrics if metrics.get(STATUS) == Status.completed.value else None

    @property
    def checkpoint(self) -> Path:
        return self.file(CHECKPOINT_FILE)

    def write_failure(self, metrics: Mapping[str, Any]) -> None:
        """Record a failure, but only in a folder this run holds: a refused run never writes. A
        record that cannot be written (an unwritable folder) must not hide the error itself."""
        if self.claimed:
            with contextlib.suppress(OSError):
                atomic_write_json(self.file(METRICS_FILE), metrics)
