"""Fine-tuning a pretrained body: the weights' own input statistics, and a frozen body.

``trainer.freeze_epochs``: for that many epochs only the head trains, then everything trains, as
fastai's ``Learner.fine_tune`` does (fastai/callback/schedule.py: ``freeze`` for
``freeze_epochs``, then ``unfreeze``); ``freeze_epochs = trainer.epochs`` trains the head only, as
fastai v1's Pets example (``cnn_learner`` freezes a pretrained body, then ``fit_one_cycle(4)``).
``trainer.train_bn``: the BatchNorm layers of a frozen body still train, their affine parameters
and running statistics (fastai's ``train_bn=True``, its default: ``Learner.freeze_to`` leaves
normalization layers trainable, fastai/learner.py); false keeps them as loaded (eval mode, no
gradient).

What freezing costs: with ``train_bn=false`` no body parameter requires a gradient and the inputs
do not either, so autograd records nothing in the body and the backward pass stops at the head (the
body's forward is all that is left of it). With ``train_bn=true`` the gradient still flows back to
the first BatchNorm layer, but no convolution or linear weight of the body gets a gradient.

The state lives in the model (``requires_grad``, BatchNorm's train/eval mode) and is set again from
the epoch number at the start of every epoch, so a run resumed in the middle of the frozen phase
continues exactly as it would have.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from regbench.config import ConfigError

log = logging.getLogger(__name__)


def use_weights_statistics(model: nn.Module, data: Any) -> None:
    """Normalize inputs with the statistics the model's pretrained weights were trained with
    (``model.input_statistics``: (mean, std), set by a builder that loaded such weights)."""
    statistics = getattr(model, "input_statistics", None)
    if statistics is None:
        return
    mean, std = (list(values) for values in statistics)
    if (mean, std) != (list(data.mean), list(data.std)):
        log.info("inputs normalized with the pretrained weights' statistics: mean %s, std %s "
                 "(instead of the dataset's %s, %s)", mean, std, list(data.mean), list(data.std))
    data.mean, data.std = mean, std


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def split_body(model: nn.Module, freeze_epochs: int) -> nn.Module:
    """The model's body (models/base.Classifier: ``body`` then ``head``); refused in one line for
    a model without that split, which has nothing to freeze apart from its head."""
    body, head = getattr(model, "body", None), getattr(model, "head", None)
    if not isinstance(body, nn.Module) or not isinstance(head, nn.Module):
        raise ConfigError(f"trainer.freeze_epochs={freeze_epochs} is not allowed: the model "
                          f"{type(model).__name__} has no body/head split to freeze; use 0")
    return body


def is_pretrained(model: nn.Module) -> bool:
    """Whether the builder loaded pretrained weights (it then gives their input statistics)."""
    return getattr(model, "input_statistics", None) is not None


def freeze_body(model: nn.Module, epoch: int, trainer: Any) -> None:
    """Before training epoch ``epoch`` (0-based; the model is in train mode): the body frozen while
    epoch < trainer.freeze_epochs, else every parameter trainable."""
    if trainer.freeze_epochs == 0:
        return
    body = split_body(model, trainer.freeze_epochs)
    frozen = epoch < trainer.freeze_epochs
    if frozen and epoch == 0:
        log.info("epochs 1-%d: the body is frozen, only the head trains (BatchNorm layers of the "
                 "body %s)", trainer.freeze_epochs,
                 "train too: trainer.train_bn=true" if trainer.train_bn
                 else "keep their weights and statistics: trainer.train_bn=false")
        if not is_pretrained(model):
            log.warning("trainer.freeze_epochs=%d with randomly initialized weights: the frozen "
                        "body is random; set model.weights to start from pretrained ones",
                        trainer.freeze_epochs)
    for module in body.modules():
        trains = not frozen or (trainer.train_bn and is_batchnorm(module))
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(trains)
        if not trains and is_batchnorm(module):
            module.eval()  # running statistics stay as loaded
    if epoch == trainer.freeze_epochs:
        log.info("epoch %d: the body is unfrozen; every layer trains from now on", epoch + 1)
