"""The CIFAR ResNet of He et al. 2016 (§4.2): a 3x3 conv with 16 channels, three stages of n basic
blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 halves the map with stride
2), global average pooling and a linear head: depth = 6n + 2 weighted layers (ResNet-20, 32, 44,
56, 110). It is ``model=resnet`` (configs/model/resnet.yaml); torchvision_resnet.py holds the
ImageNet ResNet-18/34.

Blocks are torchvision's ``BasicBlock`` (conv-BN-ReLU-conv-BN, add, ReLU), subclassed to hold a
dropout layer (blocks.py). Shortcuts across stages follow the paper's option A by default: identity on every
second pixel, zero-padded with the new channels, so the parameter counts match He et al.'s table
(ResNet-20: 0.27M); option B (1x1 projection + BN, torchvision's downsample) is
``shortcut=projection``. Initialization as torchvision's ResNet (He-normal convs, BN 1 and 0).

Normalization: ResNets are designed with BatchNorm, so without a normalization regularizer they
use nn.BatchNorm2d with PyTorch's defaults; the ``batchnorm`` regularizer's factory
(ModelOptions.norm) replaces it, e.g. with its momentum. Dropout: ``dropout("linear")`` on the
pooled penultimate features; ``dropout("conv")`` between the two convolutions of every block
(Wide-ResNet's place, Zagoruyko & Komodakis 2016) only with ``dropout_placement=before_bn``,
because there it feeds the second BN layer (the train/test variance shift of Li et al. 2019).

Stochastic depth (ModelOptions.stochastic_depth_survival, Huang et al. 2016): each block's residual
branch goes through torchvision's ``StochasticDepth`` (mode "row": dropped per example) just before
the addition, so a dropped block passes only its shortcut; block l of L keeps its branch with
probability 1 - l/L * (1 - p_L). torchvision scales kept branches by 1 / survival in training where
the paper scales by the survival at test time: the same expectation.

Input sizes: the stages keep any size valid (stride-2 3x3 convolutions round up): 32x32 CIFAR gives
32/16/8 maps, 28x28 MNIST 28/14/7, 8x8 digits 8/4/2, before the global average pooling.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from regbench.config import ModelConfig, check
from regbench.models.base import (
    Classifier,
    ModelOptions,
    input_block,
    last_conv_dropout,
    register_model,
)

STAGE_CHANNELS = [16, 32, 64]


class Shortcut(str, Enum):
    zero_pad = "zero_pad"  # He et al.'s option A (their CIFAR choice): no parameters
    projection = "projection"  # option B: 1x1 conv + norm where the shape changes


@dataclass
class ResNetConfig(ModelConfig):
    name: str = "resnet"
    # 6n + 2 weighted layers, n blocks per stage; He et al. 2016 Table 6: 20, 32, 44, 56, 110.
    # 20 (0.27M parameters) is the smallest there and the cheapest on a CPU.
    depth: int = 20
    # Channel multiplier: stages get 16w, 32w, 64w channels (Wide ResNet's k, Zagoruyko &
    # Komodakis 2016); 1 is He et al.'s ResNet.
    width: int = 1
    # Shortcut where the shape changes: zero_pad (option A, He et al. 2016 §4.2 on CIFAR) or
    # projection (option B).
    shortcut: Shortcut = Shortcut.zero_pad
    # Start every block's last BN scale at 0, so each block begins as the identity (Goyal et al.
    # 2017); off as in He et al. and torchvision's default.
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        check(self.depth >= 8 and (self.depth - 2) % 6 == 0, "model.depth", self.depth,
              "6n + 2 for n >= 1, e.g. 20, 32, 44, 56, 110 (He et al. 2016)")
        check(self.width >= 1, "model.width", self.width, "an integer >= 1")

NormFactory = Callable[[int], nn.Module]


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: keep every ``stride``-th pixel, append zero channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def shortcut(kind: Shortcut, in_channels: int, out_channels: int, stride: int,
             norm: NormFactory) -> Optional[nn.Module]:
    if stride == 1 and in_channels == out_channels:
        return None  # identity
    if kind == Shortcut.zero_pad:
        return ZeroPadShortcut(stride, out_channels - in_channels)
    from torchvision.models.resnet import conv1x1  # see DEVELOPERS.md, "Start-up"

    return nn.Sequential(conv1x1(in_channels, out_channels, stride), norm(out_channels))


def norm_factory(options: ModelOptions) -> NormFactory:
    """The regularizer's normalization if it set one, else BatchNorm2d (ResNets are built with
    it)."""
    if options.norm is None:
        return nn.BatchNorm2d
    return lambda width: options.norm(width, "conv")


def block_dropout(options: ModelOptions) -> Optional[nn.Module]:
    """Dropout between a block's convolutions, which feeds the block's second BN layer."""
    return options.dropout("conv") if options.wants_dropout(feeds_norm=True) else None


def residual_drop(options: ModelOptions, block: int, blocks: int) -> Optional[nn.Module]:
    """Stochastic depth for residual block ``block`` (1-based) of ``blocks``: drop probability
    block / blocks * (1 - p_L), Huang et al. 2016's linear decay rule; None when off."""
    if options.stochastic_depth_survival is None:
        return None
    from torchvision.ops import StochasticDepth  # see DEVELOPERS.md, "Start-up"

    return StochasticDepth(block / blocks * (1 - options.stochastic_depth_survival), mode="row")


def feature_dropout(options: ModelOptions) -> nn.Module:
    """Dropout on the pooled penultimate features (after every BN layer)."""
    dropout = options.dropout("linear") if options.wants_dropout(feeds_norm=False) else None
    return dropout if dropout is not None else nn.Identity()


def init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """As torchvision's ResNet: He-normal convs (fan_out), norm scale 1 and shift 0."""
    from torchvision.models.resnet import BasicBlock  # see DEVELOPERS.md, "Start-up"

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, BasicBlock) and getattr(module.bn2, "weight", None) is not None:
                nn.init.zeros_(module.bn2.weight)


class CifarResNet(Classifier):
    def __init__(self, cfg: ResNetConfig, in_channels: int, num_classes: int,
                 options: ModelOptions) -> None:
        from torchvision.models.resnet import conv3x3  # see DEVELOPERS.md, "Start-up"

        from regbench.models.blocks import DropoutBasicBlock

        super().__init__()
        norm = norm_factory(options)
        blocks_per_stage = (cfg.depth - 2) // 6
        widths = [channels * cfg.width for channels in STAGE_CHANNELS]
        layers: dict[str, nn.Module] = {
            "input": input_block(options),
            "stem": nn.Sequential(conv3x3(in_channels, widths[0]), norm(widths[0]),
                                  nn.ReLU(inplace=True)),
        }
        channels = widths[0]
        total_blocks = blocks_per_stage * len(widths)
        for stage, width in enumerate(widths, start=1):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 1 and index == 0 else 1
                depth_index = (stage - 1) * blocks_per_stage + index + 1
                blocks.append(DropoutBasicBlock(
                    channels, width, stride,
                    downsample=shortcut(cfg.shortcut, channels, width, stride, norm),
                    norm_layer=norm, dropout=block_dropout(options),
                    stochastic_depth=residual_drop(options, depth_index, total_blocks)))
                channels = width
            layers[f"stage{stage}"] = nn.Sequential(*blocks)
        # The last stage's maps go to pooling and the head: no normalization after them.
        layers["conv_dropout"] = last_conv_dropout(options, feeds_norm=False)
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["dropout"] = feature_dropout(options)
        self.body = nn.Sequential(OrderedDict(layers))
        self.head = nn.Linear(channels, num_classes)
        self.num_features = channels
        init_weights(self, cfg.zero_init_residual)

    def feature_layers(self) -> dict[str, nn.Module]:
        layers = super().feature_layers()
        # Each stage's output map [B, C, H, W] (flattened by regularizers that take vectors).
        for stage in range(1, len(STAGE_CHANNELS) + 1):
            layers[f"stage{stage}"] = getattr(self.body, f"stage{stage}")
        return layers


@register_model("resnet", ResNetConfig)
def build_resnet(cfg: ResNetConfig, input_shape: tuple, num_classes: int,
                 options: ModelOptions) -> CifarResNet:
    return CifarResNet(cfg, input_shape[0], num_classes, options)
