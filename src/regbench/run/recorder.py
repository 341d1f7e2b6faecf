"""What a run leaves on disk: TensorBoard events, history.jsonl, metrics.json, the test phase's
figures and test_calibration.json.

Files that other tools read while a run or sweep is going on are written so that a kill at any
moment leaves the old or the new version, never a torn one: JSON by ``files.atomic_write_json``,
history by whole-line appends with flush + fsync.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import torch
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins import projector
from torch.utils.tensorboard import SummaryWriter

from regbench.evaluation.calibration_errors import (
    CONFIDENCE_HISTOGRAM_EDGES,
    calibration_summary,
    top_label,
)
from regbench.evaluation.metrics import predictive_entropy
from regbench.evaluation.wrong_class import (
    CLASS_PROBABILITIES,
    PROJECTOR_COLUMNS,
    class_probability_matrix,
    projector_sample,
)
from regbench.files import atomic_write, atomic_write_bytes, atomic_write_json, json_ready
from regbench.run.spec import (
    CALIBRATION_FILE,
    CLASS_PROBABILITIES_PNG,
    CONFIDENCE_HIST_PNG,
    HISTORY_FILE,
    METRICS_FILE,
    RELIABILITY_PANEL_PNG,
    RELIABILITY_PNG,
    TEST_LOGITS_FILE,
    TEST_OOD_FILE,
)
from regbench.run.tensorboard import (
    RUN_NAME_HPARAM,
    custom_scalars_layout,
    epoch_scalars,
    session_summaries,
    trial_name,
)

# matplotlib is imported by the methods that draw: a run with evaluation.figures=false never
# loads it (DEVELOPERS.md, Start-up).
if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The OOD score histograms' bins: fine enough to show two modes, coarse enough for 360 test images.
OOD_HISTOGRAM_BINS = 30


def in_sweep() -> bool:
    """Whether this run is a job of a Hydra multirun (its layout then leaves the report's group
    charts the first place)."""
    from regbench.cli.hydra_hooks import in_multirun

    return in_multirun()


class DiscardingWriter:
    """The SummaryWriter calls the recorder makes, doing nothing: a run whose loggers leave out
    TensorBoard (run/loggers.py) writes no event files; its JSON files and figures stay."""

    def _get_file_writer(self) -> "DiscardingWriter":
        return self

    def add_summary(self, *args: Any, **kwargs: Any) -> None:
        pass

    add_scalar = add_histogram = add_summary

    def flush(self) -> None:
        pass

    close = flush


class RunRecorder:
    """One run's outputs, all in its Hydra run folder."""

    def __init__(self, run_dir: Path, purge_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.history_path = run_dir / HISTORY_FILE
        self.metrics_path = run_dir / METRICS_FILE
        self.tensorboard = tensorboard
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step) if tensorboard \
            else DiscardingWriter()
        self.writer._get_file_writer().add_summary(custom_scalars_layout(groups_first=in_sweep()))

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """One epoch: scalars to TensorBoard and one line to history.jsonl."""
        for key, value in epoch_scalars(record).items():
            self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()
        with self.history_path.open("a") as file:
            file.write(json.dumps(json_ready(dict(record))) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def log_prediction_histograms(self, split: str, logits: torch.Tensor, labels: torch.Tensor,
                                  step: int) -> None:
        """Confidence (all, correct, incorrect), true-class probability and entropy histograms."""
        probabilities = logits.float().softmax(dim=1)
        confidence, correct = top_label(probabilities, labels)
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
        entropy = predictive_entropy(logits)
        self.writer.add_histogram(f"{split}/entropy", entropy.cpu().numpy(), step, bins="auto")

    def write_ood_scores(self, arrays: Mapping[str, np.ndarray]) -> None:
        """test_ood.npz: every OOD score of the test split (``in_<score>``) and of each OOD set
        (``<set>_<score>``), float32, uncompressed (np.load(allow_pickle=False) reads it)."""
        atomic_write(self.run_dir / TEST_OOD_FILE, lambda file: np.savez(file, **arrays))

    def log_ood_histograms(self, scores: Mapping[str, Mapping[str, np.ndarray]], step: int) -> None:
        """``ood/<set>/<score>`` per OOD set and ``ood/in/<score>`` for the test split, each score's
        histograms on the same 30 bins spanning every set's finite values, so in and out line up."""
        for score in next(iter(scores.values())):
            finite = {name: by_score[score][np.isfinite(by_score[score])]
                      for name, by_score in scores.items()}
            pooled = np.concatenate(list(finite.values()))
            if not pooled.size:
                continue
            edges = np.histogram_bin_edges(pooled, bins=OOD_HISTOGRAM_BINS)
            for set_name, values in finite.items():
                if values.size:
                    self.writer.add_histogram(f"ood/{set_name}/{score}", values, step, bins=edges)
        self.writer.flush()

    def log_test_figures(self, logits: torch.Tensor, labels: torch.Tensor, ece: float, step: int) -> None:
        """The test split's reliability diagram and confidence histogram, in TensorBoard and as PNG
        files."""
        from regbench.evaluation.figures import confidence_histogram, reliability_diagram

        self.log_figure("test/reliability", reliability_diagram(logits, labels, ece, title="test"),
                        RELIABILITY_PNG, step)
        self.log_figure("test/confidence_hist", confidence_histogram(logits, labels, title="test"),
                        CONFIDENCE_HIST_PNG, step)

    def log_shift_by_severity(self, curves: Mapping[str, Mapping[int, float]]) -> None:
        """evaluation.shift: each per-severity mean (shift_stage.severity_curves) as a curve
        ``shift_by_severity/<metric>`` whose step is the severity (1-5)."""
        from regbench.run.shift_stage import TENSORBOARD_TAG

        for metric, values in curves.items():
            for severity, value in values.items():
                self.writer.add_scalar(f"{TENSORBOARD_TAG}/{metric}", value, severity)
        self.writer.flush()

    def write_calibration_summary(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """test_calibration.json: the reliability bins and confidence histograms the report draws."""
        atomic_write_json(self.run_dir / CALIBRATION_FILE, calibration_summary(logits, labels))

    def write_test_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """test_logits.npz: the test split's raw logits (float32 [N, K]) and labels (int64 [N]) in
        test-split order, for the report's ensemble of the seeds (report/ensembles.py).
        Uncompressed: deflate saved only a fifth of a digits run's file (14.1 of 17.8 kB)."""
        arrays = {"logits": logits.detach().float().cpu().numpy(),
                  "labels": labels.detach().long().cpu().numpy()}
        atomic_write(self.run_dir / TEST_LOGITS_FILE, lambda file: np.savez(file, **arrays))

    def log_reliability_panel(self, probabilities: Mapping[str, torch.Tensor], labels: torch.Tensor,
                              eces: Mapping[str, float], step: int) -> None:
        """One reliability diagram per calibrator (raw first), in TensorBoard and as a PNG file."""
        from regbench.evaluation.figures import reliability_panel

        figure = reliability_panel(dict(probabilities), labels, dict(eces))
        self.log_figure("test/reliability_panel", figure, RELIABILITY_PANEL_PNG, step)

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

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float],
                    step: int) -> None:
        """The run's settings (``tensorboard.hparams_values``) and final metrics for TensorBoard's
        HParams tab, in this run's own event file (SummaryWriter.add_hparams would start a separate
        sub-run), as a session named by ``tensorboard.trial_name``. The session only, no
        experiment summary: see ``hparams_experiment`` for why."""
        values = dict(hparams)
        name = str(values.pop(RUN_NAME_HPARAM, self.run_dir.name))
        finite = {key: value for key, value in metrics.items()
                  if isinstance(value, (int, float)) and math.isfinite(value)}
        for key, value in finite.items():
            self.writer.add_scalar(key, value, step)
        file_writer = self.writer._get_file_writer()
        for summary in session_summaries(values, trial_name(self.run_dir, name)):
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
        from regbench.evaluation.figures import class_probability_heatmap

        matrix = class_probability_matrix(logits, labels, len(classes))
        figure = class_probability_heatmap(matrix, classes, title="test: mean predicted probability")
        self.log_figure(CLASS_PROBABILITIES, figure, CLASS_PROBABILITIES_PNG, step)
        if self.tensorboard:  # the projector's files are for TensorBoard only
            points, metadata = projector_sample(features, labels, logits, classes)
            self.write_projector_files(points, metadata, step, tag="test_penultimate")
        self.writer.flush()

    def write_projector_files(self, points: torch.Tensor, metadata: list[list[str]], step: int,
                              tag: str) -> None:
        """The projector's files in SummaryWriter.add_embedding's layout (``<step>/<tag>/`` with
        tensors.tsv and metadata.tsv, projector_config.pbtxt in the run folder, where TensorBoard's
        projector looks for each run, so a sweep shows every job), written with numpy and
        TensorBoard's projector API: add_embedding converts every value with ``tensor.item()``,
        several times slower for a run's features (scripts/bench_startup.py profiles it)."""
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
