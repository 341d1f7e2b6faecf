"""The numbers behind reliability diagrams and confidence histograms, per bin (numpy): drawn by
figures.py, written by recording.py to test_calibration.json (which the report pools over seeds).
Apart from figures.py so that a run that draws nothing never imports matplotlib."""

from __future__ import annotations

import numpy as np
import torch

from regbench.metrics import CALIBRATION_BINS, equal_width_bins

# Confidence histograms use bins half as wide as the calibration bins.
CONFIDENCE_HISTOGRAM_EDGES = np.linspace(0, 1, 2 * CALIBRATION_BINS + 1)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS):
    """Per equal-width bin: (mean confidence, accuracy, count), in the bins ECE is computed in
    (metrics.equal_width_bins), so a diagram and its ECE agree on confidences at a bin edge too."""
    index = equal_width_bins(torch.from_numpy(np.asarray(confidence)), bins).numpy()
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct.astype(float), minlength=bins) / counts
    return mean_confidence, accuracy, counts


def split_confidence(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    confidence, prediction = logits.float().softmax(dim=1).max(dim=1)
    return confidence.cpu().numpy(), (prediction == labels).cpu().numpy()
