"""Heads for the torchvision ResNets (``model.head``): torchvision's linear classifier, or fastai's
head for transfer learning.

fastai's head is what ``vision_learner`` / ``cnn_learner`` put on a pretrained body
(fastai/vision/learner.py, ``create_head`` with its defaults ``lin_ftrs=None, ps=0.5,
concat_pool=True, first_bn=True, bn_final=False, lin_first=False``):

    AdaptiveConcatPool2d -> Flatten -> BatchNorm1d(2nf) -> Dropout(0.25) -> Linear(2nf, 512) -> ReLU
    -> BatchNorm1d(512) -> Dropout(0.5) -> Linear(512, K)

Both linear layers have no bias (``LinBnDrop``: ``bias=not bn``), the single ``ps=0.5`` becomes
0.25 for the first block and 0.5 for the last, the BatchNorm layers start at weight 1 and bias 1e-3
(fastai/layers.py ``_get_norm``) and the linear weights are He-normal (``add_head``'s
``init=nn.init.kaiming_normal_``, applied to every non-normalization layer).

Here the pooling is the end of the body (``Classifier.body``: image -> the head's input, the
2nf-vector of concatenated max- and average-pooled features) and the rest is ``Classifier.head``,
so every layer with parameters that is not pretrained sits in the head (run/finetune.py freezes
``model.body``). Regularizers shape the head through ModelOptions: a normalization regularizer's
factory makes its two BatchNorm1d layers, and a dropout regularizer's layer replaces fastai's
dropout where its placement puts dropout (``ModelOptions.wants_dropout``): before the classifier
always, and before the hidden layer (whose output feeds BatchNorm1d(512)) only with
``placement=before_bn``; fastai's own Dropout(0.25) stays there otherwise.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

import torch
from torch import nn

from regbench.models.base import ModelOptions


class HeadKind(str, enum.Enum):
    """model.head of the torchvision ResNets."""

    linear = "linear"  # torchvision's fc on the average-pooled features
    fastai = "fastai"  # fastai's create_head (this module's docstring)


# fastai create_head's defaults (fastai/vision/learner.py): lin_ftrs=None -> one hidden layer of
# 512 units; ps=0.5 -> dropout 0.25 before the hidden layer and 0.5 before the classifier.
FASTAI_HIDDEN = 512
FASTAI_DROPOUT = (0.25, 0.5)
# fastai/layers.py _get_norm: every BatchNorm it makes starts with bias 1e-3 (weight 1).
FASTAI_BN_BIAS = 1e-3


class AdaptiveConcatPool2d(nn.Module):
    """Max- and average-pooling to 1x1, concatenated along channels in fastai's order (max first,
    fastai/layers.py ``AdaptiveConcatPool2d``): [B, C, H, W] -> [B, 2C, 1, 1]. torch has no such
    layer."""

    def __init__(self) -> None:
        super().__init__()
        self.max = nn.AdaptiveMaxPool2d(1)
        self.avg = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max(x), self.avg(x)], dim=1)


def head_norm(width: int, options: ModelOptions) -> nn.Module:
    """The regularizer's normalization layer if it sets one, else BatchNorm1d; fastai's start."""
    norm = nn.BatchNorm1d(width) if options.norm is None else options.norm(width, "linear")
    if getattr(norm, "affine", False):
        nn.init.ones_(norm.weight)
        nn.init.constant_(norm.bias, FASTAI_BN_BIAS)
    return norm


def head_dropout(options: ModelOptions, feeds_norm: bool, fastai_p: float) -> nn.Module:
    """The dropout regularizer's layer where its placement puts one, else fastai's Dropout."""
    layer = options.dropout("linear") if options.wants_dropout(feeds_norm) else None
    return layer if layer is not None else nn.Dropout(fastai_p)


def fastai_head(in_features: int, num_classes: int, options: ModelOptions) -> nn.Sequential:
    """fastai's head after the pooling: ``in_features`` is 2nf (the concatenated pooling)."""
    hidden = nn.Linear(in_features, FASTAI_HIDDEN, bias=False)
    classifier = nn.Linear(FASTAI_HIDDEN, num_classes, bias=False)
    for linear in (hidden, classifier):
        nn.init.kaiming_normal_(linear.weight)
    return nn.Sequential(OrderedDict(
        norm1=head_norm(in_features, options),
        # Feeds BatchNorm1d(512) through the hidden layer: the regularizer's only with before_bn.
        dropout1=head_dropout(options, feeds_norm=True, fastai_p=FASTAI_DROPOUT[0]),
        hidden=hidden,
        relu=nn.ReLU(inplace=True),
        norm2=head_norm(FASTAI_HIDDEN, options),
        dropout2=head_dropout(options, feeds_norm=False, fastai_p=FASTAI_DROPOUT[1]),
        classifier=classifier,
    ))
