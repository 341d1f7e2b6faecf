"""torchvision's ImageNet ResNet-18, ResNet-34 and ResNet-50 (He et al. 2016), randomly initialized
or pretrained (``model.weights``: models/pretrained.py), with a linear or fastai's head
(``model.head``: models/heads.py).

The network is torchvision.models.ResNet in the layout of torchvision's ``resnet18`` / ``resnet34``
(BasicBlocks, [2, 2, 2, 2] / [3, 4, 6, 3]) or ``resnet50`` (Bottlenecks, [3, 4, 6, 3]): the same
parameters and state-dict keys, with ``norm_layer`` set from ModelOptions (nn.BatchNorm2d unless a
normalization regularizer gives its own). Only when a dropout regularizer asks for
dropout_placement=before_bn, dropout goes inside every block (see models/cifar_resnet.py): between
a BasicBlock's two convolutions, after a Bottleneck's 3x3 convolution (where timm's Bottleneck puts
its drop_block, timm/models/resnet.py). Stochastic depth (ModelOptions.stochastic_depth_survival)
on every block's residual branch, linear decay over all blocks of the four stages, as in
models/cifar_resnet.py. With the linear head, dropout("linear") acts on the pooled features (the
head's input); fastai's head has its own dropout sites (models/heads.py).

Inputs: images with other than 3 channels get a first convolution with that many input channels.
The ImageNet stem (7x7 stride-2 conv, 3x3 stride-2 max-pool) quarters the image before layer1, so
small images shrink to 1x1 maps early (8x8 digits: 2x2 after the stem, 1x1 from layer2 on; 32x32
CIFAR: 8x8 then 1x1 in layer4). That runs and trains, but it is the ImageNet model, not a CIFAR
variant; use model=resnet for small images.

Pretrained weights (ImageNet, or a local state dict in torchvision's format): the classifier layer
is kept only with the linear head and the same class count; for grayscale inputs the RGB filters of
the first convolution are summed (as timm's adapt_input_conv and fastai's _load_pretrained_weights
do), which gives the RGB network's output on the gray image in all three channels when the three
are normalized alike (pretrained.input_statistics says how close the statistics come). The model's
``input_statistics`` then holds the weights' mean and std, which the run normalizes with
(run/finetune.py: use_weights_statistics).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from regbench.config import ConfigError, ModelConfig, check
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
from regbench.models.heads import AdaptiveConcatPool2d, HeadKind, fastai_head
from regbench.models.pretrained import (
    IMAGENET,
    check_downloadable,
    check_pretrained_norms,
    check_weights,
    describe_pretrained_body,
    imagenet_state_dict,
    input_statistics,
    read_state_dict,
)

if TYPE_CHECKING:  # see DEVELOPERS.md, "Start-up"
    from torchvision.models import ResNet

log = logging.getLogger(__name__)

# Blocks per stage, as in torchvision.models.resnet18 / resnet34 / resnet50.
LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}
BOTTLENECK_MODELS = {"resnet50"}
STEM_CHANNELS = 64


@dataclass
class TorchvisionResNetConfig(ModelConfig):
    # Starting weights: null (torchvision's random initialization), imagenet (torchvision's
    # ImageNet weights, downloaded once into $TORCH_HOME/hub/checkpoints: models/pretrained.py) or
    # the path of a local state-dict file in torchvision's format.
    weights: Optional[str] = None
    # Whether model.weights=imagenet may download a missing file (needs internet); false refuses
    # the run in one line naming the file, its URL and the folder to put it in.
    download: bool = True
    # The head on the body's features: linear (torchvision's fc) or fastai (fastai's create_head
    # for transfer learning: models/heads.py). linear is torchvision's model.
    head: HeadKind = HeadKind.linear
    # The old name of model.weights for a local file; still read, with a deprecation line.
    weights_path: Optional[str] = None
    # Start every block's last BN scale at 0 (Goyal et al. 2017); torchvision's default is off.
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        check(self.weights is None or self.weights_path is None, "model.weights_path",
              self.weights_path, "null when model.weights is set (weights_path is the old name "
              "of model.weights; give the file as model.weights only)")
        check_weights("model.weights", self.weights)
        if self.weights == IMAGENET:
            check_downloadable(self.name, self.download)


@dataclass
class ResNet18Config(TorchvisionResNetConfig):
    name: str = "resnet18"


@dataclass
class ResNet34Config(TorchvisionResNetConfig):
    name: str = "resnet34"


@dataclass
class ResNet50Config(TorchvisionResNetConfig):
    name: str = "resnet50"


def block_classes(name: str) -> tuple[type, type]:
    """(torchvision's block, the same with places for dropout and stochastic depth)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from regbench.models.blocks import DropoutBasicBlock, DropoutBottleneck

    if name in BOTTLENECK_MODELS:
        return Bottleneck, DropoutBottleneck
    return BasicBlock, DropoutBasicBlock


def build_torchvision_resnet(cfg: TorchvisionResNetConfig, in_channels: int, num_classes: int,
                             options: ModelOptions) -> ResNet:
    # torchvision's resnet18/34/50 build ResNet(block, LAYERS[name]) in just this way; the block
    # class is chosen here because only the custom blocks have a place for dropout and stochastic
    # depth.
    from torchvision.models import ResNet

    plain_block, custom_block = block_classes(cfg.name)
    with_dropout = options.wants_dropout(feeds_norm=True)
    with_stochastic_depth = options.stochastic_depth_survival is not None
    custom = with_dropout or with_stochastic_depth
    net = ResNet(custom_block if custom else plain_block, LAYERS[cfg.name],
                 num_classes=num_classes, zero_init_residual=cfg.zero_init_residual,
                 norm_layer=norm_factory(options))
    if custom:
        # modules() walks layer1..layer4 in order, so index counts blocks from the input.
        blocks = [module for module in net.modules() if isinstance(module, custom_block)]
        for index, module in enumerate(blocks, start=1):
            dropout = block_dropout(options) if with_dropout else None
            module.dropout = dropout if dropout is not None else nn.Identity()
            drop = residual_drop(options, index, len(blocks))
            module.stochastic_depth = drop if drop is not None else nn.Identity()
    # After layer4, before pooling (fastai's pooled features feed its head's BatchNorm1d). The
    # pooling layers have no parameters, so the state-dict keys stay torchvision's.
    fastai = cfg.head == HeadKind.fastai
    pool = AdaptiveConcatPool2d() if fastai else net.avgpool
    conv_dropout = last_conv_dropout(options, feeds_norm=fastai)
    if not isinstance(conv_dropout, nn.Identity):
        pool = nn.Sequential(conv_dropout, pool)
    net.avgpool = pool
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, kernel_size=7, stride=2, padding=3,
                              bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net


def load_weights(net: ResNet, state: dict[str, torch.Tensor], key: str, value: str, name: str,
                 keep_classifier: bool) -> bool:
    """Load a torchvision-format state dict into ``net``: its classifier only if
    ``keep_classifier`` and the class count fits, conv1 summed to grayscale; anything else that
    does not fit is refused in one line. Returns whether the classifier was loaded."""
    own = net.state_dict()
    loads_classifier = keep_classifier and "fc.weight" in state and \
        state["fc.weight"].shape == own["fc.weight"].shape
    if keep_classifier and "fc.weight" in state and not loads_classifier:
        log.info("%s=%s: its classifier has %d classes; keeping a new one with %d", key, value,
                 state["fc.weight"].shape[0], own["fc.weight"].shape[0])
    if not loads_classifier:
        state = {**state, "fc.weight": own["fc.weight"], "fc.bias": own["fc.bias"]}
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.shape[1] == 3 and own["conv1.weight"].shape[1] == 1:
        state = {**state, "conv1.weight": conv1.sum(dim=1, keepdim=True)}
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("wrong shape:", mismatched), ("missing:", missing),
                                    ("unexpected:", unexpected)) if keys]
    if problems:
        raise ConfigError(f"{key}={value!r} is not allowed: it does not fit model={name} "
                          f"({'; '.join(problems)})")
    net.load_state_dict(state)
    return loads_classifier


class TorchvisionResNet(Classifier):
    def __init__(self, net: ResNet, options: ModelOptions, head: HeadKind) -> None:
        super().__init__()
        features, num_classes = net.fc.in_features, net.fc.out_features
        if head == HeadKind.fastai:
            self.num_features = 2 * features  # concatenated max and average pooling
            self.head = fastai_head(self.num_features, num_classes, options)
            tail: nn.Module = nn.Identity()  # fastai's head holds the dropout sites
        else:
            self.num_features = features
            self.head = net.fc
            tail = feature_dropout(options)
        net.fc = nn.Identity()  # the trunk ends with the pooled, flattened features
        self.body = nn.Sequential(OrderedDict(input=input_block(options), resnet=net, dropout=tail))
        # (mean, std) of the pretrained weights' inputs (run/finetune.py); None: the dataset's.
        self.input_statistics: Optional[tuple[list[float], list[float]]] = None

    def feature_layers(self) -> dict[str, nn.Module]:
        layers = super().feature_layers()
        # Each stage's output map [B, C, H, W], under torchvision's names.
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            layers[stage] = getattr(self.body.resnet, stage)
        return layers


def weights_setting(cfg: TorchvisionResNetConfig) -> tuple[str, Optional[str]]:
    """(the key that named the starting weights, its value); weights_path is read as weights."""
    if cfg.weights_path is not None:
        log.warning("model.weights_path is deprecated: read as model.weights=%s (its new name)",
                    cfg.weights_path)
        return "model.weights_path", cfg.weights_path
    return "model.weights", cfg.weights


def load_pretrained(net: ResNet, cfg: TorchvisionResNetConfig, key: str, value: str) -> bool:
    """Refuse regularizers that would change the pretrained body, then load the weights."""
    check_pretrained_norms(net, value)
    if value == IMAGENET:
        state = imagenet_state_dict(cfg.name, cfg.download)
    else:
        state = read_state_dict(Path(value).expanduser(), key)
    return load_weights(net, state, key, value, cfg.name,
                        keep_classifier=cfg.head == HeadKind.linear)


@register_model("resnet18", ResNet18Config)
@register_model("resnet34", ResNet34Config)
@register_model("resnet50", ResNet50Config)
def build(cfg: TorchvisionResNetConfig, input_shape: tuple, num_classes: int,
          options: ModelOptions) -> TorchvisionResNet:
    net = build_torchvision_resnet(cfg, input_shape[0], num_classes, options)
    key, weights = weights_setting(cfg)
    loaded_classifier = weights is not None and load_pretrained(net, cfg, key, weights)
    model = TorchvisionResNet(net, options, cfg.head)
    if weights is not None:
        model.input_statistics = input_statistics(cfg.name, input_shape[0])
        head = "the loaded classifier" if loaded_classifier else \
            f"{HeadKind(cfg.head).value}, {num_classes} classes, new (random weights)"
        describe_pretrained_body(weights, model, head)
    return model
