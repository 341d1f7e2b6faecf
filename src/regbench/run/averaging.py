"""Evaluating a weight average (EMA, SWA) in place of the trained weights.

A regularizer that keeps an average returns it from ``averaged_weights`` (regularizers/base.py).
Validation then measures the average every epoch with the trained weights swapped out and back
(``swapped_in``); the test phase loads it into the model for good (``use_average``), after
measuring the trained weights once more (``test_raw/``), and recomputes BatchNorm statistics over
the training split when the regularizer asks for it (SWA: Izmailov et al. 2018, §3.2, since an
average of weights has no running statistics of its own).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn

log = logging.getLogger(__name__)

RAW = "_raw"  # val_raw/, test_raw/: the trained weights beside the average


def averaging_regularizer(regularizers: Iterable) -> Optional[object]:
    """The one regularizer whose averaged_weights() is ready, or None."""
    ready = [r for r in regularizers if r.averaged_weights() is not None]
    return ready[0] if ready else None


@contextlib.contextmanager
def swapped_in(model: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """``state`` in the model for the block, the trained weights back after it."""
    trained = {key: value.detach().clone() for key, value in model.state_dict().items()}
    model.load_state_dict(state)
    try:
        yield
    finally:
        model.load_state_dict(trained)


def recompute_batchnorm(model: nn.Module, batches: Iterable, prepare: Callable,
                        device: torch.device) -> None:
    """BatchNorm running statistics of the model's current weights, from one pass over
    ``batches`` (torch.optim.swa_utils.update_bn, which resets them and averages over the pass)."""
    from torch.optim.swa_utils import update_bn

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    inputs = (prepare(images.to(device, non_blocking=True)) for images, _ in batches)
    with torch.no_grad():
        update_bn(inputs, model)
    log.info("BatchNorm statistics of the averaged weights recomputed over the training split")
