"""torchvision's BasicBlock with places for dropout and stochastic depth, shared by cifar_resnet.py
and torchvision_resnet.py. A module of its own, imported by the model builders only, because
subclassing needs torchvision at import time (see DEVELOPERS.md, "Start-up")."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


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
