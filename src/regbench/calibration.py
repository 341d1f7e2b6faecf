"""Post-hoc temperature scaling (Guo et al. 2017): one temperature T fitted on the validation split."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Guo et al.'s reference code: T starts at 1.5, LBFGS with lr 0.01 and 50 iterations. A strong-Wolfe
# line search is added so the fit reaches the NLL minimum however far it is from 1.5.
INITIAL_TEMPERATURE = 1.5
LBFGS_LR = 0.01
LBFGS_ITERATIONS = 50


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
