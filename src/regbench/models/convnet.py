"""The MNIST convnet of Li & Maki 2018 (feature contraction): conv5x5-32, pool, conv5x5-64, pool,
FC1024, linear head.

It is the network of TensorFlow's "Deep MNIST for experts" tutorial, as the authors' example
(VladimirLi/feature_contraction_example, modules/model.py) builds it: "same" padding for the
convolutions, 2x2 max-pooling with stride 2 and 'valid' padding (sizes round down, PyTorch's
default), ReLU, and dropout after FC1024 when a dropout regularizer asks for it. Li & Maki penalize
the FC1024 features before their ReLU (``penultimate_preact``).

Input sizes: "same" convolutions keep every size valid; the flattened map is 64 x H/4 x W/4
(rounded down): 7x7 for 28x28 MNIST as in the paper, 8x8 for 32x32 CIFAR, 2x2 for 8x8 digits.
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
CONV_CHANNELS = [32, 64]
HIDDEN_SIZE = 1024


@dataclass
class ConvNetConfig(ModelConfig):
    name: str = "convnet"


class ConvNet(Classifier):
    def __init__(self, input_shape: tuple, num_classes: int, options: ModelOptions) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: dict[str, nn.Module] = {"input": input_block(options)}
        for index, out_channels in enumerate(CONV_CHANNELS, start=1):
            conv = nn.Conv2d(channels, out_channels, KERNEL, padding=KERNEL // 2,
                             bias=options.norm is None)
            layers[f"conv{index}"] = pooled_block(conv, out_channels, nn.MaxPool2d(2), options)
            height, width, channels = height // 2, width // 2, out_channels
        if height < 1 or width < 1:
            raise ConfigError(f"model=convnet needs images of at least 4x4 pixels, got "
                              f"{input_shape[1]}x{input_shape[2]}")
        # fc1 is a hidden block: normalized when a norm is set.
        layers["conv_dropout"] = last_conv_dropout(options, feeds_norm=options.norm is not None)
        layers["flatten"] = nn.Flatten()
        layers.update(fully_connected_blocks(channels * height * width, [HIDDEN_SIZE], options)[0])
        self.body = nn.Sequential(OrderedDict(layers))
        self.head = nn.Linear(HIDDEN_SIZE, num_classes)
        self.num_features = HIDDEN_SIZE

    def feature_layers(self) -> dict[str, nn.Module]:
        layers = super().feature_layers()
        # FC1024 before its ReLU: the layer Li & Maki's feature contraction penalizes.
        layers["penultimate_preact"] = before_activation(self.body.fc1)
        # The flattened conv features (pool2: 3136-d on MNIST), which the authors' example can
        # also contract.
        layers["conv_features"] = self.body.flatten
        return layers


@register_model("convnet", ConvNetConfig)
def build_convnet(cfg: ConvNetConfig, input_shape: tuple, num_classes: int,
                  options: ModelOptions) -> ConvNet:
    return ConvNet(tuple(input_shape), num_classes, options)
