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

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from regbench.figures import (
    CONFIDENCE_HISTOGRAM_EDGES,
    class_probability_heatmap,
    confidence_histogram,
    reliability_bins,
    reliability_diagram,
    reliability_panel,
    split_confidence,
)
from regbench.confusion import (
    CLASS_PROBABILITIES,
    PROJECTOR_COLUMNS,
    class_probability_matrix,
    projector_sample,
)
from regbench.spec import CALIBRATION_FILE, HISTORY_FILE, METRICS_FILE


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all; an OSError names ``path`` (not the temporary file)."""
    try:
        write_then_rename(path, data)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None


def write_then_rename(path: Path, data: bytes) -> None:
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


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Reliability bins and confidence histograms as numbers, so a report can overlay runs."""
    confidence, correct = split_confidence(logits, labels)
    mean_confidence, accuracy, counts = reliability_bins(confidence, correct)
    histogram = {
        name: np.histogram(confidence[mask], bins=CONFIDENCE_HISTOGRAM_EDGES)[0].tolist()
        for name, mask in (("correct", correct), ("incorrect", ~correct))
    }
    return {
        "bin_edges": np.linspace(0, 1, len(counts) + 1).tolist(),
        "bin_confidence": [None if c == 0 else float(v) for v, c in zip(mean_confidence, counts)],
        "bin_accuracy": [None if c == 0 else float(v) for v, c in zip(accuracy, counts)],
        "bin_count": counts.tolist(),
        "histogram_edges": CONFIDENCE_HISTOGRAM_EDGES.tolist(),
        "histogram_correct": histogram["correct"],
        "histogram_incorrect": histogram["incorrect"],
    }


class RunRecorder:
    """One run's outputs, all in its Hydra run folder."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        self.run_dir = run_dir
        self.history_path = run_dir / HISTORY_FILE
        self.metrics_path = run_dir / METRICS_FILE
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """One epoch: scalars to TensorBoard and one line to history.jsonl."""
        epoch = record["epoch"]
        for key, value in record.items():
            if (key != "epoch" and not key.endswith("seconds") and not isinstance(value, bool)
                    and isinstance(value, (int, float))):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()
        with self.history_path.open("a") as file:
            file.write(json.dumps(json_ready(dict(record))) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def log_prediction_histograms(self, split: str, logits: torch.Tensor, labels: torch.Tensor,
                                  step: int) -> None:
        """Confidence (all, correct, incorrect), true-class probability and entropy histograms."""
        log_probs = logits.float().log_softmax(dim=1)
        probabilities = log_probs.exp()
        confidence, prediction = probabilities.max(dim=1)
        correct = prediction == labels
        values = {
            "confidence": confidence,
            "confidence_correct": confidence[correct],
            "confidence_incorrect": confidence[~correct],
            "true_class_prob": probabilities.gather(1, labels[:, None]).squeeze(1),
        }
        for name, tensor in values.items():
            if tensor.numel():
                self.writer.add_histogram(f"{split}/{name}", tensor.cpu().numpy(), step,
                                          bins=CONFIDENCE_HISTOGRAM_EDGES)
        entropy = -(probabilities * log_probs).sum(dim=1)
        self.writer.add_histogram(f"{split}/entropy", entropy.cpu().numpy(), step, bins="auto")

    def log_figures(self, split: str, logits: torch.Tensor, labels: torch.Tensor, ece: float,
                    step: int) -> None:
        """Reliability diagram and confidence histogram, in TensorBoard and as PNG files."""
        figures: dict[str, Figure] = {
            "reliability": reliability_diagram(logits, labels, ece, title=split),
            "confidence_hist": confidence_histogram(logits, labels, title=split),
        }
        for name, figure in figures.items():
            figure.savefig(self.run_dir / f"{split}_{name}.png")
            self.writer.add_figure(f"{split}/{name}", figure, step, close=False)
        atomic_write_json(self.run_dir / CALIBRATION_FILE,
                          calibration_summary(logits, labels))

    def log_reliability_panel(self, probabilities: Mapping[str, torch.Tensor], labels: torch.Tensor,
                              eces: Mapping[str, float], step: int) -> None:
        """One reliability diagram per calibrator (raw first), in TensorBoard and as a PNG file."""
        figure = reliability_panel(dict(probabilities), labels, dict(eces))
        figure.savefig(self.run_dir / "test_reliability_panel.png")
        self.writer.add_figure("test/reliability_panel", figure, step, close=False)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """The run's settings and final metrics for TensorBoard's HParams tab, in this run's own
        event file (SummaryWriter.add_hparams would start a separate sub-run)."""
        finite = {key: value for key, value in metrics.items()
                  if isinstance(value, (int, float)) and math.isfinite(value)}
        for key, value in finite.items():
            self.writer.add_scalar(key, value, step)
        experiment, session_start, session_end = hparams_summaries(dict(hparams), finite)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
        self.writer.flush()

    def rewrite_history(self, records: Iterable[Mapping[str, Any]]) -> None:
        """On resume: the history up to the checkpoint, dropping epochs logged after it."""
        lines = "".join(json.dumps(json_ready(dict(r))) + "\n" for r in records)
        atomic_write_bytes(self.history_path, lines.encode())

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        atomic_write_json(self.metrics_path, metrics)

    def close(self) -> None:
        self.writer.close()

    def log_wrong_class_views(self, logits: torch.Tensor, labels: torch.Tensor,
                              features: torch.Tensor, classes: list[str], step: int) -> None:
        """Where the wrong-class probability goes (confusion.py): the mean probability per (true,
        predicted) class as a heat-map, in TensorBoard and as test_class_probabilities.png, and
        the penultimate features of up to 2,000 test examples for TensorBoard's projector.
        SummaryWriter.add_embedding writes projector_config.pbtxt into the run folder (the log dir),
        which is where TensorBoard's projector looks for each run, so a sweep shows every job."""
        matrix = class_probability_matrix(logits, labels, len(classes))
        figure = class_probability_heatmap(matrix, classes, title="test: mean predicted probability")
        figure.savefig(self.run_dir / "test_class_probabilities.png")
        self.writer.add_figure(CLASS_PROBABILITIES, figure, step, close=False)
        points, metadata = projector_sample(features, labels, logits, classes)
        self.writer.add_embedding(points, metadata=metadata, metadata_header=PROJECTOR_COLUMNS,
                                  global_step=step, tag="test_penultimate")
        self.writer.flush()
