"""Where the wrong-class probability goes, at test time.

The argument for soft targets (Hinton et al. 2015's "dark knowledge"): a model that mistakes a
leopard for a cat rather than a car has learned how classes resemble each other, and that lives in
the probabilities it gives the wrong classes. Müller et al. 2019 (§3-4) show that label smoothing
erases it: the penultimate features of each class collapse into tight, equidistant clusters and the
wrong-class probabilities become uniform. Three views of it:

- ``class_probability_matrix``: the mean predicted probability of each class j over the test
  examples of each true class i (a soft confusion matrix; rows sum to 1), drawn as a heat-map.
- ``wrong_class_entropy``: the entropy of the wrong-class distribution renormalized to sum to 1,
  averaged over examples (nats; log(K - 1) when it is uniform). Label smoothing pushes it up.
- ``projector_sample``: up to 2,000 test examples' penultimate features with their labels, for
  TensorBoard's embedding projector (written by RunRecorder.log_embedding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WRONG_CLASS_ENTROPY = "test/wrong_class_entropy"
CLASS_PROBABILITIES = "test/class_probabilities"
# TensorBoard's projector runs PCA/t-SNE in the browser; 2,000 points stay interactive.
PROJECTOR_EXAMPLES = 2000


def class_probability_matrix(logits: torch.Tensor, labels: torch.Tensor,
                             num_classes: int) -> torch.Tensor:
    """[K, K]: row i is the mean softmax over the examples of true class i (NaN for a class with
    no example)."""
    probabilities = logits.float().softmax(dim=1)
    onehot = F.one_hot(labels, num_classes).to(probabilities.dtype)
    sums = onehot.T @ probabilities
    counts = onehot.sum(dim=0)[:, None]
    return sums / counts  # 0 / 0 = NaN marks an absent class


def wrong_class_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over examples of H(q), q_j = p_j / (1 - p_y) for j != y. Computed as a softmax over the
    wrong classes' logits (the true class masked out), which is the same distribution and stays
    exact when p_y rounds to 1 (where 1 - p_y would be 0 in floating point)."""
    logits = logits.float()
    true_class = F.one_hot(labels, logits.shape[1]).bool()
    log_q = logits.masked_fill(true_class, float("-inf")).log_softmax(dim=1)
    terms = (log_q.exp() * log_q).masked_fill(true_class, 0.0)  # 0 * -inf is NaN, not 0
    return -terms.sum(dim=1).mean()


def wrong_class_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {WRONG_CLASS_ENTROPY: wrong_class_entropy(logits, labels).item()}


# Metadata columns of the projector's points (colour or search by any of them).
PROJECTOR_COLUMNS = ["label", "predicted", "correct"]


def projector_sample(features: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                     classes: list[str], limit: int = PROJECTOR_EXAMPLES
                     ) -> tuple[torch.Tensor, list[list[str]]]:
    """The first ``limit`` test examples' features (the test split's order is fixed, so every run
    of a sweep shows the same images) and their metadata rows: label, prediction, correct."""
    count = min(limit, len(labels))
    predictions = logits[:count].argmax(dim=1)
    rows = [[classes[label], classes[predicted], str(label == predicted).lower()]
            for label, predicted in zip(labels[:count].tolist(), predictions.tolist())]
    return features[:count].float().cpu(), rows
