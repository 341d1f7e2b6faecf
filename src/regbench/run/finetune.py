"""Fine-tuning a pretrained body: the weights' own input statistics, and a frozen body.

``trainer.freeze_epochs``: for that many epochs only the head trains (the body's parameters get no
gradient, so the backward pass stops at the head), then everything trains, as fastai's
``Learner.fine_tune`` does (fastai/callback/schedule.py: ``freeze`` for ``freeze_epochs``, then
``unfreeze``). ``trainer.train_bn``: the BatchNorm layers of a frozen body still train, their
affine parameters and running statistics (fastai's ``train_bn=True``, its default: "batchnorm
layers are always trained", fastai/learner.py); false keeps them as loaded (eval mode, no
gradient).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

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


def freeze_body(model: nn.Module, epoch: int, trainer: Any) -> None:
    """Before training epoch ``epoch`` (0-based; the model is in train mode): the body frozen while
    epoch < trainer.freeze_epochs, else every parameter trainable."""
    frozen = epoch < trainer.freeze_epochs
    body = getattr(model, "body", None)
    if body is None or trainer.freeze_epochs == 0:
        return
    for module in body.modules():
        keep_training = not frozen or (trainer.train_bn and is_batchnorm(module))
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(keep_training)
        if frozen and not trainer.train_bn and is_batchnorm(module):
            module.eval()  # running statistics stay as loaded
    if epoch == trainer.freeze_epochs and epoch > 0:
        log.info("epoch %d: the body is unfrozen; every layer trains from now on", epoch + 1)
