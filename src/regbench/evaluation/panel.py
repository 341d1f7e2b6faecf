"""The calibration panel: every calibration metric on the raw test probabilities and after each
post-hoc calibrator (calibrators.py) fitted on the validation split.

Keys: ``test/<metric>`` raw and ``test/<metric>@<calibrator>`` after a calibrator, plus
``temperature`` (the fitted T). The metrics are calibration_errors.py's, and:

- ``nll``: mean -log p_y, p_y clamped at 1e-12 (isotonic can give a class probability 0).
- ``brier``: metrics.brier_score, mean sum_k (p_k - 1[y = k])^2, in float64.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from regbench.config import EvaluationConfig
from regbench.evaluation.calibration_errors import (
    adaptive_calibration_error,
    area_under_risk_coverage,
    classwise_calibration_error,
    debiased_l2_calibration_error,
    expected_calibration_error,
    smooth_ece,
)
from regbench.evaluation.calibrators import Calibrator, fit_calibrator, warn_if_few_examples
from regbench.evaluation.metrics import brier_score

METRICS = ("ece", "ece_adaptive", "ece_classwise", "ece_debiased_l2", "smece", "nll", "brier", "aurc")
# Every ECE convention: the ones ranking flips are looked for between.
ECE_METRICS = ("ece", "ece_adaptive", "ece_classwise", "ece_debiased_l2", "smece")
# The default of evaluation.calibrators (config/schema.py), as names.
DEFAULT_CALIBRATORS = tuple(name.value for name in EvaluationConfig().calibrators)
RAW = "raw"
NLL_FLOOR = 1e-12


def negative_log_likelihood(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    true_class = probabilities.double().gather(1, labels[:, None]).squeeze(1)
    return (-true_class.clamp_min(NLL_FLOOR).log()).mean().item()


def brier(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return brier_score(probabilities.double(), labels).item()


METRIC_FUNCTIONS = {
    "ece": expected_calibration_error,
    "ece_adaptive": adaptive_calibration_error,
    "ece_classwise": classwise_calibration_error,
    "ece_debiased_l2": debiased_l2_calibration_error,
    "smece": smooth_ece,
    "nll": negative_log_likelihood,
    "brier": brier,
    "aurc": area_under_risk_coverage,
}


def calibration_metrics(probabilities: torch.Tensor, labels: torch.Tensor,
                        metrics: Iterable[str] = METRICS) -> dict[str, float]:
    """Every metric of probabilities [N, K] (rows summing to 1) and labels [N], as Python floats."""
    if len(labels) == 0:
        raise ValueError("calibration metrics need at least one example")
    probabilities, labels = probabilities.detach(), labels.detach().long()
    return {name: METRIC_FUNCTIONS[name](probabilities, labels) for name in metrics}


def metric_key(metric: str, calibrator: str = RAW, split: str = "test") -> str:
    """``test/ece`` raw, ``test/ece@temperature`` after a calibrator."""
    return f"{split}/{metric}" if calibrator == RAW else f"{split}/{metric}@{calibrator}"


def calibration_panel(val_logits: torch.Tensor, val_labels: torch.Tensor,
                      test_logits: torch.Tensor, test_labels: torch.Tensor,
                      calibrators: Sequence[str] = DEFAULT_CALIBRATORS,
                      ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Fit each calibrator on the validation logits/labels, apply it to the test logits, and measure.

    Returns (metrics, probabilities): metrics has ``test/<metric>`` for the raw softmax and
    ``test/<metric>@<calibrator>`` for every calibrator and metric, plus the fitted calibrators'
    scalars (``temperature``); probabilities maps "raw" and each calibrator name to the test
    probabilities [N, K] (CPU), for ``figures.reliability_panel``. Matrix scaling on a validation split
    that is too small raises ConfigError. The test labels are used for measuring only.
    """
    test_labels = test_labels.detach().long().cpu()
    probabilities = {RAW: test_logits.detach().double().softmax(dim=1).cpu()}
    metrics: dict[str, float] = {}
    warn_if_few_examples(len(val_labels), calibrators)
    for name in calibrators:
        calibrator: Calibrator = fit_calibrator(name, val_logits, val_labels.long())
        probabilities[name] = calibrator(test_logits).double().cpu()
        metrics.update(calibrator.scalars)
    for name, probs in probabilities.items():
        metrics.update({metric_key(metric, name): value
                        for metric, value in calibration_metrics(probs, test_labels).items()})
    return metrics, probabilities
