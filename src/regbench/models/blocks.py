"""torchvision's BasicBlock and Bottleneck with places for dropout and stochastic depth, used by
cifar_resnet.py and torchvision_resnet.py. A module of its own, imported by the model builders only, because
subclassing needs torchvision at import time (see DEVELOPERS.md, "Start-up")."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class DropoutBasicBlock(BasicBlock):
    """torchvision's BasicBlock with a dropout layer between its two convolutions and a stochastic
    depth layer on the residual branch (Identities unless given). Same parameters and state-dict
    keys as BasicBlock."""

    def __init__(self, *args, dropout: Optional[nn.Module] = None,
                 stochastic_depth: Optional[nn.Module] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dropout = dropout if dropout is not None else nn.Identity()
        self.stochastic_depth = stochastic_depth if stochastic_depth is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BasicBlock.forward with self.dropout after the first ReLU and self.stochastic_depth on
        # the branch before the addition; torchvision has no hook for either.
        out = self.dropout(self.relu(self.bn1(self.conv1(x))))
        out = self.stochastic_depth(self.bn2(self.conv2(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class DropoutBottleneck(Bottleneck):
    """torchvision's Bottleneck with a dropout layer after its 3x3 convolution (where timm's
    Bottleneck puts DropBlock) and a stochastic depth layer on the residual branch (Identities
    unless set); same parameters and state-dict keys as Bottleneck."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dropout: nn.Module = nn.Identity()
        self.stochastic_depth: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Bottleneck.forward with self.dropout after the 3x3 convolution's activation and
        # self.stochastic_depth on the branch before the addition; torchvision has no hook.
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.dropout(self.relu(self.bn2(self.conv2(out))))
        out = self.stochastic_depth(self.bn3(self.conv3(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)
