"""Out-of-distribution (OOD) detection from a model's logits: four scores, four metrics per OOD
set, and their means over the sets.

Every score is higher for an input the model takes as in-distribution (ID). The metrics treat ID
as the positive class, the convention of the energy and LogitNorm code (Liu et al. 2020,
``wetliu/energy_ood``; Wei et al. 2022, ``hongxin001/logitnorm_ood``: ``get_measures(-in, -out)``):

- ``auroc``: area under the ROC curve; the probability that an ID input scores above an OOD one
  (ties count one half). The one metric that does not depend on which class is positive.
- ``aupr_in``: average precision (scikit-learn's step-wise sum, no trapezoid) with ID positive.
- ``aupr_out``: average precision with OOD positive and the score negated.
- ``fpr95``: the share of OOD inputs accepted as ID at the highest threshold that keeps at least
  95 % of the ID inputs (the first ROC point with TPR >= 0.95, no interpolation; OpenOOD's rule,
  ``openood/evaluators/metrics.py``, with ID positive). Lower is better.

Keys: ``ood/<set>/<metric>_<score>`` per set, ``ood/<metric>_<score>`` for the means over sets
(AUROC and FPR95 only). scikit-learn is imported where the metrics are computed (DEVELOPERS.md,
"Start-up").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch

from regbench.config import check
from regbench.evaluation.metrics import predictive_entropy

# The true positive rate FPR95 is read at (Hendrycks & Gimpel 2017 onwards).
TPR_LEVEL = 0.95
METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
# The metrics averaged over OOD sets (the ood/auroc_<score>, ood/fpr95_<score>).
MEAN_METRICS = ("auroc", "fpr95")


def max_softmax_probability(logits: torch.Tensor) -> torch.Tensor:
    """max_k softmax(f)_k (Hendrycks & Gimpel 2017). In float64: in float32 every logit margin
    above ~17 gives exactly 1.0 and confident ID inputs would tie; float64 ties above ~37."""
    return logits.double().softmax(dim=1).amax(dim=1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """max_k f_k, the unnormalized logit (Hendrycks et al. 2022, "Scaling OOD detection")."""
    return logits.double().amax(dim=1)


def negative_energy(logits: torch.Tensor) -> torch.Tensor:
    """-E(x) = T logsumexp(f / T) with T = 1 (Liu et al. 2020; energy_ood's --T default 1.0):
    ID inputs have lower energy, so its negation is higher for them."""
    return torch.logsumexp(logits.double(), dim=1)


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """sum_k p_k log p_k, in nats: near-uniform predictions (high entropy) score low."""
    return -predictive_entropy(logits).double()


SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "msp": max_softmax_probability,
    "maxlogit": max_logit,
    "energy": negative_energy,
    "entropy": negative_entropy,
}


def detection_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR95 of one score, ID positive; NaN when a score is not
    finite (a diverged model), as the other metrics of such a run are."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    scores = torch.cat([in_scores, out_scores]).double().cpu().numpy()
    if not np.isfinite(scores).all():
        return dict.fromkeys(METRICS, math.nan)
    is_in = np.concatenate([np.ones(len(in_scores)), np.zeros(len(out_scores))])
    # Every threshold kept: drop_intermediate may drop the first point reaching TPR 0.95 when it
    # lies on a straight segment of the curve, which moves FPR95 to the next point.
    fpr, tpr, _ = roc_curve(is_in, scores, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(is_in, scores)),
        "aupr_in": float(average_precision_score(is_in, scores)),
        "aupr_out": float(average_precision_score(1 - is_in, -scores)),
        "fpr95": float(fpr[np.searchsorted(tpr, TPR_LEVEL)]),  # tpr is non-decreasing
    }


def check_set_name(set_name: str) -> None:
    check(bool(set_name) and "/" not in set_name, "evaluation.ood", set_name,
          "an OOD set name without '/' (it is one level of the metric key ood/<set>/<metric>)")


def check_logits(in_logits: torch.Tensor, out_logits: torch.Tensor) -> None:
    if (in_logits.ndim != 2 or out_logits.ndim != 2 or in_logits.shape[1] != out_logits.shape[1]
            or not len(in_logits) or not len(out_logits)):
        raise ValueError(f"expected ID and OOD logits (n, classes) with n > 0 and the same "
                         f"classes; got {tuple(in_logits.shape)} and {tuple(out_logits.shape)}")


def ood_metrics(in_logits: torch.Tensor, out_logits: torch.Tensor, set_name: str
                ) -> dict[str, float]:
    """``ood/<set_name>/<metric>_<score>`` for every metric and score: ID is the test split,
    OOD the set's images, both through the same model."""
    check_set_name(set_name)
    check_logits(in_logits, out_logits)
    metrics = {}
    for score_name, score in SCORES.items():
        values = detection_metrics(score(in_logits.detach()), score(out_logits.detach()))
        metrics.update({f"ood/{set_name}/{metric}_{score_name}": value
                        for metric, value in values.items()})
    return metrics


def mean_over_sets(metrics: Mapping[str, float], sets: Iterable[str]) -> dict[str, float]:
    """``ood/<metric>_<score>``: the unweighted mean over ``sets`` of each set's AUROC and FPR95
    (every set counts once, whatever its size); empty when there are no sets."""
    sets = list(sets)
    if not sets:
        return {}
    means = {}
    for metric in MEAN_METRICS:
        for score_name in SCORES:
            values = [metrics[f"ood/{name}/{metric}_{score_name}"] for name in sets]
            means[f"ood/{metric}_{score_name}"] = math.fsum(values) / len(values)
    return means
