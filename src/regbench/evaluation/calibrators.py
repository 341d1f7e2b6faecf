"""Post-hoc calibrators: each is fitted on the validation split's logits and labels only and maps
logits to probabilities [N, K].

| name          | what is fitted                                   | how                                   |
| ------------- | ------------------------------------------------ | ------------------------------------- |
| `temperature` | one T > 0, softmax(z / T) (Guo et al. 2017)       | NLL, torch LBFGS from T = 1.5         |
| `platt`       | per class k: sigmoid(a_k z_k + b_k), renormalized | scikit-learn LogisticRegression       |
| `vector`      | per class scale and bias, softmax(w * z + b)      | NLL, torch LBFGS from w = 1, b = 0    |
| `matrix`      | softmax(W z + b), K^2 + K parameters              | NLL, torch LBFGS from W = I, b = 0    |
| `isotonic`    | per class k: isotonic map of p_k, renormalized    | scikit-learn IsotonicRegression on    |
|               |                                                  | Platt's smoothed targets              |

``fit_calibrator(name, val_logits, val_labels)`` returns a ``Calibrator``: call it on (test) logits
to get probabilities; ``scalars`` holds what is worth recording (``{"temperature": T}``).
One-vs-rest Platt and isotonic follow scikit-learn's ``CalibratedClassifierCV`` for several classes
(Zadrozny & Elkan 2002): one binary calibrator per class, then rows divided by their sum, and a row
whose calibrated values are all zero becomes uniform (as scikit-learn does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from regbench.config import CalibratorName, ConfigError

log = logging.getLogger(__name__)

# Guo et al.'s reference code: T starts at 1.5, LBFGS with lr 0.01 and 50 iterations. A strong-Wolfe
# line search is added so the fit reaches the NLL minimum however far it is from 1.5.
INITIAL_TEMPERATURE = 1.5
LBFGS_LR = 0.01
LBFGS_ITERATIONS = 50
# Vector and matrix scaling have more parameters; LBFGS with strong-Wolfe steps of length 1.
SCALING_LBFGS_ITERATIONS = 200
# Matrix scaling is refused below this many validation examples per parameter.
MATRIX_EXAMPLES_PER_PARAMETER = 10
# Below this many validation examples a calibrator's fit is mostly noise, said in one warning:
# 300 examples fill ECE's 15 bins (calibration_errors.CALIBRATION_BINS) with 20 each on average,
# and a bin's accuracy over 20 examples has a standard error of up to sqrt(0.25 / 20) = 0.11, more
# than the few percent of ECE a calibrator corrects (Guo et al. 2017 fit on 5,000 images or more);
# isotonic regression, the most flexible map, overfits small calibration sets first
# (Niculescu-Mizil & Caruana 2005).
FEW_VALIDATION_EXAMPLES = 300


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimizing NLL(softmax(logits / T), labels)."""
    logits = logits.detach().float()
    # Optimizing log T keeps T positive.
    log_temperature = torch.full((), INITIAL_TEMPERATURE, device=logits.device).log().requires_grad_()
    optimizer = torch.optim.LBFGS([log_temperature], lr=LBFGS_LR, max_iter=LBFGS_ITERATIONS,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_temperature.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_temperature.exp().item()


@dataclass
class Calibrator:
    """A fitted calibrator: ``calibrator(logits) -> probabilities`` on the logits' device."""

    name: str
    transform: Callable[[torch.Tensor], torch.Tensor]
    scalars: dict[str, float] = field(default_factory=dict)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.transform(logits.detach().float())


def fit_temperature_scaling(logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    temperature = fit_temperature(logits, labels)
    return Calibrator("temperature", lambda z: (z / temperature).softmax(dim=1),
                      {"temperature": temperature})


def fit_affine_scaling(logits: torch.Tensor, labels: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) minimizing NLL(softmax(z W^T + b)); W diagonal (stored as a vector) unless full.
    Unregularized, as in Guo et al. 2017."""
    logits = logits.detach().float()
    classes = logits.shape[1]
    if full:
        weight = torch.eye(classes, device=logits.device)
    else:
        weight = torch.ones(classes, device=logits.device)
    weight.requires_grad_()
    bias = torch.zeros(classes, device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=SCALING_LBFGS_ITERATIONS,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        scaled = logits @ weight.T + bias if full else logits * weight + bias
        loss = F.cross_entropy(scaled, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def fit_vector_scaling(logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    weight, bias = fit_affine_scaling(logits, labels, full=False)
    return Calibrator("vector", lambda z: (z * weight.to(z.device) + bias.to(z.device)).softmax(dim=1))


def matrix_scaling_minimum(classes: int) -> int:
    return MATRIX_EXAMPLES_PER_PARAMETER * (classes * classes + classes)


def fit_matrix_scaling(logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    examples, classes = logits.shape
    minimum = matrix_scaling_minimum(classes)
    if examples < minimum:
        raise ConfigError(
            f"matrix scaling refused: {examples} validation examples for {classes * classes + classes} "
            f"parameters (K^2 + K, K = {classes}); it needs at least {MATRIX_EXAMPLES_PER_PARAMETER} "
            f"per parameter, n_val >= {minimum}; use a larger validation split or vector scaling")
    weight, bias = fit_affine_scaling(logits, labels, full=True)
    return Calibrator("matrix", lambda z: (z @ weight.to(z.device).T + bias.to(z.device)).softmax(dim=1))


def renormalize(probabilities: np.ndarray) -> np.ndarray:
    """Rows divided by their sum; an all-zero row becomes uniform (scikit-learn's choice)."""
    total = probabilities.sum(axis=1, keepdims=True)
    uniform = np.full_like(probabilities, 1 / probabilities.shape[1])
    return np.divide(probabilities, total, out=uniform, where=total > 0)


def one_blas_thread():
    """scikit-learn's fits of these tiny problems on one BLAS/OpenMP thread: its default threads
    spin-wait on a busy machine, which costs far more than such a fit computes."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def one_vs_rest_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """log(p_k / (1 - p_k)) = z_k - logsumexp_{j != k} z_j of softmax(z), per class, computed stably."""
    classes = logits.shape[1]
    others = logits.unsqueeze(1).expand(-1, classes, -1).masked_fill(
        torch.eye(classes, dtype=torch.bool, device=logits.device), float("-inf"))
    return logits - others.logsumexp(dim=2)


def fit_platt(logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    """One-vs-rest Platt scaling: per class k, P(y = k) = sigmoid(a_k s_k + b_k), then renormalized,
    where s_k = log(p_k / (1 - p_k)) is the one-vs-rest log-odds of the softmax p.

    scikit-learn's CalibratedClassifierCV(method="sigmoid") feeds the raw decision function z_k
    instead; for a softmax model z_k alone does not determine p_k (the softmax ignores a shift of all
    logits), so that version cannot even leave a calibrated model alone (measured: ECE 0.02 -> 0.17
    on calibrated random logits). With s_k, a = 1 and b = 0 give back p_k / sum (= p) exactly.

    Fitted with scikit-learn's public, unpenalized ``LogisticRegression`` on the 1-D feature s_k.
    scikit-learn's own Platt fit (``sklearn.calibration._sigmoid_calibration``) is private, so it is
    not imported; its two ingredients are reproduced (a test checks the fit against it): Platt's
    smoothed targets (N+ + 1)/(N+ + 2) and 1/(N- + 2), given to LogisticRegression as each example
    twice, labelled 1 with weight t and 0 with weight 1 - t (the same cross-entropy), and the feature
    divided by its largest magnitude (a logistic regression without penalty is invariant to that).
    Smoothed targets also make a class missing from the validation split fit (to a small constant)
    instead of failing.
    """
    classes = logits.shape[1]
    if classes == 1:
        return Calibrator("platt", lambda z: torch.ones_like(z))
    s, y = as_numpy(one_vs_rest_log_odds(logits.float())), labels.detach().cpu().numpy()
    slopes, intercepts = np.zeros(classes), np.zeros(classes)
    with one_blas_thread():
        for k in range(classes):
            slopes[k], intercepts[k] = fit_sigmoid(s[:, k], y == k)

    def transform(test_logits: torch.Tensor) -> torch.Tensor:
        margin = as_numpy(one_vs_rest_log_odds(test_logits)) * slopes + intercepts
        scores = 1 / (1 + np.exp(-margin.clip(-500, 500)))
        return torch.from_numpy(renormalize(scores)).float().to(test_logits.device)

    return Calibrator("platt", transform)


def fit_sigmoid(feature: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Platt's (a, b) of P(positive) = sigmoid(a x + b), with his smoothed targets (see fit_platt)."""
    from sklearn.linear_model import LogisticRegression

    examples = len(feature)
    target = smoothed_targets(positive)
    finite = np.isfinite(feature)
    feature = np.where(finite, feature, np.sign(feature) * np.abs(feature[finite]).max(initial=1.0))
    scale = max(np.abs(feature).max(), 1e-12)
    model = LogisticRegression(C=np.inf, tol=1e-8, max_iter=1000)
    model.fit(np.r_[feature, feature][:, None] / scale, np.r_[np.ones(examples), np.zeros(examples)],
              sample_weight=np.r_[target, 1 - target])
    return model.coef_[0, 0] / scale, model.intercept_[0]


def smoothed_targets(positive: np.ndarray) -> np.ndarray:
    """Platt's (1999) smoothed targets: (N+ + 1)/(N+ + 2) for a positive example, 1/(N- + 2) for
    a negative one: the probabilities Bayes' rule gives with a uniform prior after N+ positives and
    N- negatives (Laplace's rule of succession), never 0 or 1."""
    examples, n_pos = len(positive), int(positive.sum())
    return np.where(positive, (n_pos + 1) / (n_pos + 2), 1 / (examples - n_pos + 2))


def fit_isotonic(logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    """One-vs-rest isotonic regression (Zadrozny & Elkan 2002) on softmax p_k per class,
    ``IsotonicRegression(out_of_bounds="clip")`` from scikit-learn, then renormalized; a row mapped to
    all zeros becomes uniform (as in scikit-learn's CalibratedClassifierCV).

    The targets are Platt's smoothed ones (``smoothed_targets``) rather than 1[y = k]: fitted to
    0/1 targets, every example below the lowest-scored validation example of class k gets
    probability 0 for k (a test example of class k there then costs the NLL's floor, -log 1e-12 =
    27.6 nats; on real MNIST that made isotonic's test NLL 0.29-0.42 against 0.15 raw). Pool
    adjacent violators is equivariant to an increasing affine map of the targets, so the fit is
    the 0/1 fit mapped from [0, 1] onto [1/(N- + 2), (N+ + 1)/(N+ + 2)]: its floor is the smallest
    probability N- validation negatives can support, the same targets Platt scaling uses
    (fit_sigmoid). A calibrator that still makes test NLL worse than raw is flagged
    (``warn_if_worse_than_raw``)."""
    from sklearn.isotonic import IsotonicRegression

    p, y = as_numpy(logits.float().softmax(dim=1)), labels.detach().cpu().numpy()
    with one_blas_thread():
        models = [IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
                  .fit(p[:, k], smoothed_targets(y == k)) for k in range(p.shape[1])]

    def transform(test_logits: torch.Tensor) -> torch.Tensor:
        q = as_numpy(test_logits.softmax(dim=1))
        scores = np.stack([model.predict(q[:, k]) for k, model in enumerate(models)], axis=1)
        return torch.from_numpy(renormalize(scores)).float().to(test_logits.device)

    return Calibrator("isotonic", transform)


# The names are evaluation.calibrators' choices (config/schema.py CalibratorName), in its order.
FITS: dict[CalibratorName, Callable[[torch.Tensor, torch.Tensor], Calibrator]] = {
    CalibratorName.temperature: fit_temperature_scaling,
    CalibratorName.platt: fit_platt,
    CalibratorName.vector: fit_vector_scaling,
    CalibratorName.isotonic: fit_isotonic,
    CalibratorName.matrix: fit_matrix_scaling,
}
CALIBRATORS = {name.value: FITS[name] for name in CalibratorName}


def warn_if_few_examples(examples: int, names: Sequence[str]) -> None:
    """One warning line when calibrators ``names`` are to be fitted on fewer than
    FEW_VALIDATION_EXAMPLES validation examples."""
    if names and examples < FEW_VALIDATION_EXAMPLES:
        log.warning("calibrators (%s) fitted on %d validation examples, fewer than %d: their "
                    "test/*@<calibrator> metrics are noisy; raise dataset.val_size to compare them",
                    ", ".join(names), examples, FEW_VALIDATION_EXAMPLES)


def fit_calibrator(name: str, val_logits: torch.Tensor, val_labels: torch.Tensor) -> Calibrator:
    """Fit calibrator ``name`` (a key of CALIBRATORS) on validation logits [N, K] and labels [N]."""
    if name not in CALIBRATORS:
        raise ValueError(f"unknown calibrator {name!r}; known: {', '.join(CALIBRATORS)}")
    if len(val_labels) == 0:
        raise ValueError(f"calibrator {name!r} needs a non-empty validation split")
    return CALIBRATORS[name](val_logits.detach(), val_labels.detach())


def worse_than_raw(metrics: Mapping[str, float], split: str = "test") -> list[str]:
    """The calibrators whose NLL on ``split`` is above the raw softmax's in a calibration panel's
    metrics (``<split>/nll`` and ``<split>/nll@<name>``, evaluation/panel.py's keys)."""
    raw = metrics.get(f"{split}/nll")
    if raw is None:
        return []
    prefix = f"{split}/nll@"
    return [key[len(prefix):] for key, value in metrics.items()
            if key.startswith(prefix) and value > raw]


def warn_if_worse_than_raw(metrics: Mapping[str, float], split: str = "test") -> None:
    """One warning line per calibrator that made the NLL worse than raw: its probabilities are
    further from the labels than the model's own (the report marks it in its calibration table)."""
    for name in worse_than_raw(metrics, split):
        log.warning("calibrator %s made %s NLL worse than the raw softmax (%.4f > %.4f): its "
                    "probabilities are further from the labels than the model's own; prefer raw "
                    "or temperature scaling, or raise dataset.val_size", name, split,
                    metrics[f"{split}/nll@{name}"], metrics[f"{split}/nll"])
