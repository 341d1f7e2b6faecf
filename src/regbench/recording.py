"""What a run leaves on disk: TensorBoard events, history.jsonl, metrics.json.

Files that other tools read while a run or sweep is going on are written so that a kill at any
moment leaves the old or the new version, never a torn one: JSON by temporary file + rename,
history by whole-line appends with flush + fsync.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import torch
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from regbench.calibration_bins import CONFIDENCE_HISTOGRAM_EDGES, reliability_bins, split_confidence
from regbench.confusion import (
    CLASS_PROBABILITIES,
    PROJECTOR_COLUMNS,
    class_probability_matrix,
    projector_sample,
)
from regbench.spec import (
    CALIBRATION_FILE,
    GAP_ACC,
    HISTORY_FILE,
    METRICS_FILE,
    SEED_KEY,
    TEST_ACC,
    TEST_ECE,
    TEST_ECE_TEMPERATURE,
    TEST_MEAN_CONFIDENCE,
    TEST_NLL,
)

# matplotlib (about 0.5 s to import) is imported by the methods that draw: a run with
# evaluation.figures=false never loads it.
if TYPE_CHECKING:
    from matplotlib.figure import Figure

# --- TensorBoard: HParams and the Custom Scalars layout ------------------------------------------

# The HParams column holding a run's readable name ("label_smoothing | mlp on digits | seed 0"):
# TensorBoard's trial id is the run's folder, cut short in its table.
RUN_NAME_HPARAM = "run"
# The metric columns of the HParams table, in this order.
HPARAMS_METRICS = (TEST_ACC, TEST_NLL, TEST_ECE, TEST_ECE_TEMPERATURE, TEST_MEAN_CONFIDENCE, GAP_ACC,
                   "gap/nll", "val/acc")


def hparams_values(experiment_settings: Mapping[str, Any], seed: Any, name: str) -> dict[str, Any]:
    """One run's HParams row: its display name, its experiment settings and seed, as the numbers,
    strings and booleans TensorBoard takes (lists and None as text)."""
    values = {RUN_NAME_HPARAM: name, **experiment_settings, SEED_KEY: seed}
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in values.items()}


def hparam_type(values: list[Any]) -> int:
    if all(isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_BOOL
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def hparams_experiment(rows: Iterable[Mapping[str, Any]], metrics: Iterable[str] = HPARAMS_METRICS) -> Summary:
    """The HParams tab's columns for a sweep: every setting any run has (so each regularizer's
    coefficients are a column for all runs, empty where not selected), marked ``differs`` when
    it varies, and the metric columns. TensorBoard lists differing columns first (then by name),
    so what varies (regularizer, its coefficients, seed) comes before the constant settings. Only
    one such summary may be in a logdir: TensorBoard uses the first it finds, so runs write none
    (their columns are then computed from all runs) and the sweep writes this one."""
    rows = list(rows)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    infos = []
    for key in keys:
        values = [row[key] for row in rows if key in row]
        differs = len({json.dumps(v) for v in values}) > 1 or len(values) < len(rows)
        infos.append(api_pb2.HParamInfo(name=key, type=hparam_type(values), differs=differs))
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=[
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics])
    content = hparams_metadata.create_summary_metadata(
        hparams_metadata.plugin_data_pb2.HParamsPluginData(experiment=experiment))
    return Summary(value=[Summary.Value(tag=hparams_metadata.EXPERIMENT_TAG, metadata=content)])


# Custom Scalars: one chart per quantity overlays every run (a regex matches the tag in all runs).
# The closed category keeps the end-of-run values (test/, gap/) off the first screen.
SCALARS_LAYOUT = (
    ("validation", False, (("accuracy", "val/acc$"), ("ECE (fraction)", "val/ece$"),
                           ("mean confidence", "val/mean_confidence$"), ("NLL", "val/nll$"))),
    ("training", False, (("objective train/loss", "train/loss$"),
                         ("loss terms train/loss_*", "train/loss_.*"),
                         ("accuracy (training batches)", "train/acc$"), ("learning rate", "^lr$"))),
    ("end of run (test split, gaps)", True, (("test accuracy", "test/acc$"),
                                             ("test ECE raw and calibrated", "test/ece(@.*)?$"),
                                             ("generalization gaps", "gap/.*"))),
)


def custom_scalars_layout() -> Summary:
    """SCALARS_LAYOUT as the Custom Scalars plugin's layout summary. torch's
    SummaryWriter.add_custom_scalars cannot mark a category closed, hence this."""
    layout = layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, closed=closed, chart=[
            layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
            for name, regex in charts])
        for title, closed, charts in SCALARS_LAYOUT])
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()],
                         tensor_shape=TensorShapeProto())
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    return Summary(value=[Summary.Value(tag="custom_scalars__config__", tensor=tensor, metadata=metadata)])


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
        self.writer._get_file_writer().add_summary(custom_scalars_layout())

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
        from regbench.figures import confidence_histogram, reliability_diagram

        figures: dict[str, Figure] = {
            "reliability": reliability_diagram(logits, labels, ece, title=split),
            "confidence_hist": confidence_histogram(logits, labels, title=split),
        }
        for name, figure in figures.items():
            self.log_figure(f"{split}/{name}", figure, f"{split}_{name}.png", step)

    def write_calibration_summary(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """test_calibration.json: the reliability bins and confidence histograms the report draws."""
        atomic_write_json(self.run_dir / CALIBRATION_FILE, calibration_summary(logits, labels))

    def log_reliability_panel(self, probabilities: Mapping[str, torch.Tensor], labels: torch.Tensor,
                              eces: Mapping[str, float], step: int) -> None:
        """One reliability diagram per calibrator (raw first), in TensorBoard and as a PNG file."""
        from regbench.figures import reliability_panel

        figure = reliability_panel(dict(probabilities), labels, dict(eces))
        self.log_figure("test/reliability_panel", figure, "test_reliability_panel.png", step)

    def log_figure(self, tag: str, figure: Figure, file_name: str, step: int) -> None:
        """One figure as a TensorBoard image and a PNG file in the run folder, from ONE rendering
        (savefig and SummaryWriter.add_figure would each draw it, layout included, again)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        pixels = np.asarray(canvas.buffer_rgba())[..., :3]
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        atomic_write_bytes(self.run_dir / file_name, png.getvalue())
        # The same PNG bytes as TensorBoard's image summary (add_image would encode it again).
        height, width, channels = pixels.shape
        image = Summary.Image(height=height, width=width, colorspace=channels,
                              encoded_image_string=png.getvalue())
        self.writer._get_file_writer().add_summary(
            Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """The run's settings and final metrics for TensorBoard's HParams tab, in this run's own
        event file (SummaryWriter.add_hparams would start a separate sub-run). The session only,
        no experiment summary: see ``hparams_experiment`` for why."""
        finite = {key: value for key, value in metrics.items()
                  if isinstance(value, (int, float)) and math.isfinite(value)}
        for key, value in finite.items():
            self.writer.add_scalar(key, value, step)
        _, session_start, session_end = hparams_summaries(dict(hparams), finite)
        file_writer = self.writer._get_file_writer()
        for summary in (session_start, session_end):
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
        the penultimate features of up to 2,000 test examples for TensorBoard's projector."""
        from regbench.figures import class_probability_heatmap

        matrix = class_probability_matrix(logits, labels, len(classes))
        figure = class_probability_heatmap(matrix, classes, title="test: mean predicted probability")
        self.log_figure(CLASS_PROBABILITIES, figure, "test_class_probabilities.png", step)
        points, metadata = projector_sample(features, labels, logits, classes)
        self.write_projector_files(points, metadata, step, tag="test_penultimate")
        self.writer.flush()

    def write_projector_files(self, points: torch.Tensor, metadata: list[list[str]], step: int,
                              tag: str) -> None:
        """The projector's files in SummaryWriter.add_embedding's layout (``<step>/<tag>/`` with
        tensors.tsv and metadata.tsv, projector_config.pbtxt in the run folder, where TensorBoard's
        projector looks for each run, so a sweep shows every job), written with numpy and
        TensorBoard's projector API: add_embedding converts every value with ``tensor.item()``
        (0.29 s for the default job's 360 x 1024 features, against 0.07 s here)."""
        subdir = f"{step:05d}/{tag}"
        folder = self.run_dir / subdir
        folder.mkdir(parents=True, exist_ok=True)
        np.savetxt(folder / "tensors.tsv", points.numpy(), fmt="%.7g", delimiter="\t")
        rows = ["\t".join(row) for row in [PROJECTOR_COLUMNS, *metadata]]
        (folder / "metadata.tsv").write_text("\n".join(rows) + "\n")
        config = projector.ProjectorConfig()
        config.embeddings.add(tensor_name=f"{tag}:{step:05d}", tensor_path=f"{subdir}/tensors.tsv",
                              metadata_path=f"{subdir}/metadata.tsv")
        projector.visualize_embeddings(str(self.run_dir), config)
