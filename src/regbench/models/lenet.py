"""LeNet-5 (LeCun et al. 1998): conv5x5-6, pool, conv5x5-16, pool, FC120, FC84, linear head.

Modernized as in common PyTorch LeNet-5s and Guo et al. 2017's CIFAR LeNet-5: ReLU instead of the
scaled tanh, 2x2 max-pooling instead of trainable average subsampling, C3 fully connected to S2
(no connection table) and a linear softmax head instead of the RBF output layer.

Input sizes: LeNet-5 takes 32x32 images; MNIST's 28x28 digits were centred in that 32x32 frame. So
a 5x5 convolution gets "same" padding (2) when its input is smaller than LeNet-5's at that layer
(32 for C1, 14 for C3) and none otherwise. 28x28 MNIST thus runs exactly like LeNet-5 (C1 padded
to 28x28, C3 10x10, 16x5x5 features) and 32x32 CIFAR too (no padding); 8x8 digits pad both
convolutions (8 -> pool 4 -> pool 2: 16x2x2 features into FC120); larger images (pets) give a
bigger flattened map, whose size is computed here for FC120.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from regbench.config import ConfigError, ModelConfig
from regbench.models.base import (
    Classifier,
    ModelOptions,
    before_activation,
    fully_connected_blocks,
    input_block,
    last_conv_dropout,
    pooled_block,
    register_model,
)

KERNEL = 5
# (output channels, LeNet-5's input size for this convolution) of C1 and C3.
CONV_LAYERS = [(6, 32), (16, 14)]
HIDDEN_SIZES = [120, 84]  # F5 (C5 is a fully connected layer on a 5x5 map) and F6


@dataclass
class LeNetConfig(ModelConfig):
    name: str = "lenet"


def same_padding_if_smaller(size: int, lenet_size: int) -> int:
    return KERNEL // 2 if size < lenet_size else 0


class LeNet(Classifier):
    def __init__(self, input_shape: tuple, num_classes: int, options: ModelOptions) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: dict[str, nn.Module] = {"input": input_block(options)}
        for index, (out_channels, lenet_size) in enumerate(CONV_LAYERS, start=1):
            padding = (same_padding_if_smaller(height, lenet_size),
                       same_padding_if_smaller(width, lenet_size))
            conv = nn.Conv2d(channels, out_channels, KERNEL, padding=padding,
                             bias=options.norm is None)
            layers[f"conv{index}"] = pooled_block(conv, out_channels, nn.MaxPool2d(2), options)
            height = (height + 2 * padding[0] - KERNEL + 1) // 2
            width = (width + 2 * padding[1] - KERNEL + 1) // 2
            channels = out_channels
        if height < 1 or width < 1:
            raise ConfigError(f"model=lenet needs images of at least 4x4 pixels, got "
                              f"{input_shape[1]}x{input_shape[2]}")
        # fc1 is a hidden block: normalized when a norm is set.
        layers["conv_dropout"] = last_conv_dropout(options, feeds_norm=options.norm is not None)
        layers["flatten"] = nn.Flatten()
        blocks, features = fully_connected_blocks(channels * height * width, HIDDEN_SIZES, options)
        layers.update(blocks)
        self.body = nn.Sequential(OrderedDict(layers))
        self.head = nn.Linear(features, num_classes)
        self.num_features = features

    def feature_layers(self) -> dict[str, nn.Module]:
        layers = super().feature_layers()
        # F6 (FC84) before its ReLU, e.g. for feature contraction.
        layers["penultimate_preact"] = before_activation(self.body.fc2)
        # The flattened output of the conv stages (S4: 16x5x5 on MNIST and CIFAR).
        layers["conv_features"] = self.body.flatten
        return layers


@register_model("lenet", LeNetConfig)
def build_lenet(cfg: LeNetConfig, input_shape: tuple, num_classes: int,
                options: ModelOptions) -> LeNet:
    return LeNet(tuple(input_shape), num_classes, options)
