"""torchvision's ImageNet ResNet-18 and ResNet-34 (He et al. 2016), randomly initialized.

The network is torchvision.models.ResNet with BasicBlocks in the layout of torchvision's
``resnet18`` / ``resnet34`` (same parameters and state-dict keys), with ``norm_layer`` set from
ModelOptions (nn.BatchNorm2d unless a normalization regularizer gives its own) and, only when a
dropout regularizer asks for dropout_placement=before_bn, dropout between the two convolutions of
every block (see models/cifar_resnet.py). Dropout("linear") acts on the pooled 512-d features.
Stochastic depth (ModelOptions.stochastic_depth_survival) on every block's residual branch, linear
decay over all blocks of the four stages, as in models/cifar_resnet.py.

Inputs: images with other than 3 channels get a first convolution with that many input channels.
The ImageNet stem (7x7 stride-2 conv, 3x3 stride-2 max-pool) quarters the image before layer1, so
small images shrink to 1x1 maps early (8x8 digits: 2x2 after the stem, 1x1 from layer2 on; 32x32
CIFAR: 8x8 then 1x1 in layer4). That runs and trains, but it is the ImageNet model, not a CIFAR
variant; use model=resnet for small images.

``weights_path`` loads a local state dict in torchvision's format (e.g. the file torchvision
downloads for ResNet18_Weights.IMAGENET1K_V1). The classifier layer is skipped when its class count
differs; for grayscale inputs the RGB filters of the first convolution are summed (as timm's
adapt_input_conv does), which gives the same output as feeding the gray image in all three channels.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from regbench.config import ConfigError, ModelConfig
from regbench.models.base import (
    Classifier,
    ModelOptions,
    input_block,
    last_conv_dropout,
    register_model,
)
from regbench.models.cifar_resnet import (
    block_dropout,
    feature_dropout,
    norm_factory,
    residual_drop,
)

if TYPE_CHECKING:  # see DEVELOPERS.md, "Start-up"
    from torchvision.models import ResNet

log = logging.getLogger(__name__)

# Blocks per stage, as in torchvision.models.resnet18 / resnet34.
LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}
STEM_CHANNELS = 64


@dataclass
class TorchvisionResNetConfig(ModelConfig):
    # A local state-dict file in torchvision's format to start from (null: random initialization).
    weights_path: Optional[str] = None
    # Start every block's last BN scale at 0 (Goyal et al. 2017); torchvision's default is off.
    zero_init_residual: bool = False


@dataclass
class ResNet18Config(TorchvisionResNetConfig):
    name: str = "resnet18"


@dataclass
class ResNet34Config(TorchvisionResNetConfig):
    name: str = "resnet34"


def build_torchvision_resnet(name: str, in_channels: int, num_classes: int, options: ModelOptions,
                             zero_init_residual: bool) -> ResNet:
    # torchvision's resnet18/34 build ResNet(BasicBlock, LAYERS[name]) in just this way; the block
    # class is chosen here because only DropoutBasicBlock has a place for dropout and stochastic
    # depth.
    from torchvision.models import ResNet
    from torchvision.models.resnet import BasicBlock

    from regbench.models.blocks import DropoutBasicBlock

    with_dropout = options.wants_dropout(feeds_norm=True)
    with_stochastic_depth = options.stochastic_depth_survival is not None
    custom_block = with_dropout or with_stochastic_depth
    net = ResNet(DropoutBasicBlock if custom_block else BasicBlock, LAYERS[name],
                 num_classes=num_classes, zero_init_residual=zero_init_residual,
                 norm_layer=norm_factory(options))
    if custom_block:
        # modules() walks layer1..layer4 in order, so index counts blocks from the input.
        blocks = [module for module in net.modules() if isinstance(module, DropoutBasicBlock)]
        for index, module in enumerate(blocks, start=1):
            dropout = block_dropout(options) if with_dropout else None
            module.dropout = dropout if dropout is not None else nn.Identity()
            drop = residual_drop(options, index, len(blocks))
            module.stochastic_depth = drop if drop is not None else nn.Identity()
    conv_dropout = last_conv_dropout(options, feeds_norm=False)
    if not isinstance(conv_dropout, nn.Identity):
        # After layer4, before pooling; avgpool has no parameters, so the state-dict keys stay
        # torchvision's.
        net.avgpool = nn.Sequential(conv_dropout, net.avgpool)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, kernel_size=7, stride=2, padding=3,
                              bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"{key}={str(path)!r} is not allowed: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types; all mean "not a state dict"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{key}={str(path)!r} is not allowed: not a readable state dict "
                          f"({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{key}={str(path)!r} is not allowed: the file holds no state dict "
                          f"(a mapping of parameter names to tensors)")
    return state


def load_weights(net: ResNet, path: Path, name: str) -> None:
    """Load a torchvision-format state dict; skip fc if its class count differs, adapt conv1 to
    grayscale; refuse anything else that does not fit, in one line."""
    key = "model.weights_path"
    state = read_state_dict(path, key)
    own = net.state_dict()
    if "fc.weight" in state and state["fc.weight"].shape != own["fc.weight"].shape:
        log.info("%s: classifier of %s has %d classes; keeping a new one with %d", key, path,
                 state["fc.weight"].shape[0], own["fc.weight"].shape[0])
        state = {**state, "fc.weight": own["fc.weight"], "fc.bias": own["fc.bias"]}
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.shape[1] == 3 and own["conv1.weight"].shape[1] == 1:
        state["conv1.weight"] = conv1.sum(dim=1, keepdim=True)
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("wrong shape:", mismatched), ("missing:", missing),
                                    ("unexpected:", unexpected)) if keys]
    if problems:
        raise ConfigError(f"{key}={str(path)!r} is not allowed: it does not fit model={name} "
                          f"({'; '.join(problems)})")
    net.load_state_dict(state)


class TorchvisionResNet(Classifier):
    def __init__(self, net: ResNet, options: ModelOptions) -> None:
        super().__init__()
        self.head = net.fc
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()  # the trunk ends with the pooled, flattened features
        self.body = nn.Sequential(OrderedDict(
            input=input_block(options), resnet=net, dropout=feature_dropout(options)))

    def feature_layers(self) -> dict[str, nn.Module]:
        layers = super().feature_layers()
        # Each stage's output map [B, C, H, W], under torchvision's names.
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            layers[stage] = getattr(self.body.resnet, stage)
        return layers


@register_model("resnet18", ResNet18Config)
@register_model("resnet34", ResNet34Config)
def build(cfg: TorchvisionResNetConfig, input_shape: tuple, num_classes: int,
          options: ModelOptions) -> TorchvisionResNet:
    net = build_torchvision_resnet(cfg.name, input_shape[0], num_classes, options,
                                   cfg.zero_init_residual)
    if cfg.weights_path is not None:
        load_weights(net, Path(cfg.weights_path).expanduser(), cfg.name)
    return TorchvisionResNet(net, options)
