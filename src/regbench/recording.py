"""What a run leaves on disk: TensorBoard events, history.jsonl, metrics.json.

Files that other tools read while a run or sweep is going on are written so that a kill at any
moment leaves the old or the new version, never a torn one: JSON by temporary file + rename,
history by whole-line appends with flush + fsync.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from torch.utils.tensorboard import SummaryWriter


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def json_ready(value: Any) -> Any:
    """Plain JSON: NaN and infinities (a diverged run) become null instead of invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(json_ready(data), indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, text.encode())


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


class RunRecorder:
    """One run's outputs, all in its Hydra run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.history_path = run_dir / "history.jsonl"
        self.metrics_path = run_dir / "metrics.json"
        self.writer = SummaryWriter(log_dir=str(run_dir))

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """One epoch: scalars to TensorBoard and one line to history.jsonl."""
        epoch = record["epoch"]
        for key, value in record.items():
            if key not in ("epoch", "seconds") and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()
        with self.history_path.open("a") as file:
            file.write(json.dumps(json_ready(dict(record))) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def rewrite_history(self, records: Iterable[Mapping[str, Any]]) -> None:
        """On resume: the history up to the checkpoint, dropping epochs logged after it."""
        lines = "".join(json.dumps(json_ready(dict(r))) + "\n" for r in records)
        atomic_write_bytes(self.history_path, lines.encode())

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        atomic_write_json(self.metrics_path, metrics)

    def close(self) -> None:
        self.writer.close()
