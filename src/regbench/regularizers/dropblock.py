"""DropBlock (Ghiasi, Lin & Le 2018, "DropBlock: A regularization method for convolutional
networks", NeurIPS).

Dropout of contiguous b x b regions of convolutional feature maps, in training only. On an H-by-W
map, with b clipped to the map (min(b, H), min(b, W)), block corners are drawn as Bernoulli(gamma)
seeds only where a whole block fits, gamma = (1 - keep) * H * W / b^2 / ((H - b + 1)(W - b + 1)),
so that about a share 1 - keep of the units is dropped; each seed's block is painted by pooling the
seeds over a block-sized window (``block_mask``), and the kept units are scaled by numel /
sum(kept_mask) over the tensor. Masks are drawn per example and per channel, as in the TensorFlow
reference (tensorflow/tpu models/official/resnet/resnet_model.py ``dropblock``: a uniform draw of
the tensor's shape). ``drop_block`` is the functional core, ``DropBlock2d`` a module around it (as
timm's layers/drop.py; timm couples the channels by default, the reference does not).

Placement, by forward hooks on the built model (no model file changes; a hook's return value
replaces the module's output, and it drops only while that module is in training mode):

- ResNets (model=resnet, resnet18, resnet34): as the paper, in groups 3 and 4 (the last two stages:
  torchvision's layer3 and layer4, the CIFAR ResNet's stage2 and stage3), the drop rate of group 3
  a quarter of group 4's (the reference's resnet_main.py: 1 - keep_g = (1 - keep) / 4^(4 - g)).
  In every block of those groups: after the BN of each convolution (bn1, before its ReLU, which
  commutes with a non-negative mask; bn2, before the residual addition) and on the shortcut where
  it is a module (projection or zero-padding). That is the reference's bottleneck placement
  (after every conv's BN and on the shortcut) carried to the basic block, which the reference's
  own ``residual_block`` leaves without DropBlock; an identity shortcut is a bare reference in
  torchvision's BasicBlock.forward, with no module to hook, so it is not masked.
- Other conv nets (lenet, convnet): once, after the last convolution (its output before the ReLU,
  after the normalization layer when there is one) at the full rate.
- A model without a convolution (mlp) is refused in one line when it is built.

Schedule: the keep probability falls linearly from 1 at the start of training to ``keep_prob`` at
its end (the reference's resnet_main.py: keep(t) = 1 - t / T * (1 - keep)), from the training
progress the loop hands to ``loss_terms`` (StepOutput.progress, the fraction of training done
before the step). ``transform_batch`` does not get it and ``loss_terms`` runs after the forward
pass, so the rate set there is used from the next step's forward on: one step late, a shift of
(1 - keep) / (epochs * steps per epoch) in the keep probability. The progress is in the
checkpoint, so a resumed run continues at the same rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from regbench.config import ConfigError, check
from regbench.models.base import Classifier, before_activation
from regbench.regularizers.base import Regularizer, RunContext, StepOutput, register_regularizer

log = logging.getLogger(__name__)

PREFIX = "regularizer.dropblock"
# Group 3's drop rate as a share of group 4's: (1 - keep) / 4^(4 - 3) in the reference's
# resnet_main.py.
GROUP3_SHARE = 1 / 4


@dataclass
class DropBlockConfig:
    # The paper's ResNet-50 ImageNet setting, the reference's defaults (tensorflow/tpu
    # configs/resnet_config.py: dropblock_keep_prob 0.9, dropblock_size 7): the keep probability at
    # the end of training and the block side in feature-map pixels (clipped to the map).
    keep_prob: float = 0.9
    block_size: int = 7
    # true: keep probability ramped linearly from 1 to keep_prob over training (the paper's
    # schedule, reference resnet_main.py); false: keep_prob from the first step (timm's default).
    linear_schedule: bool = True

    def __post_init__(self) -> None:
        # keep_prob = 1 would drop nothing; 0 would drop everything.
        check(0 < self.keep_prob < 1, f"{PREFIX}.keep_prob", self.keep_prob,
              "a probability in (0, 1)")
        check(self.block_size >= 1, f"{PREFIX}.block_size", self.block_size,
              "an integer >= 1 (feature-map pixels)")


def block_mask(seeds: torch.Tensor, block_height: int, block_width: int) -> torch.Tensor:
    """1 where a unit is dropped: every seed [B, C, H - bh + 1, W - bw + 1] (a block's top-left
    corner) painted into a bh x bw block of the [B, C, H, W] map.

    This is the reference's pooling of the seeds over a block-sized window (a stride-1 max-pool of
    the seeds padded by the block size less one), computed as a count of the seeds in each window
    from two cumulative sums: the same mask (tested), for even sizes too, at a fraction of the
    cost of torch's stride-1 max_pool2d on the CPU."""
    # One more zero row and column in front, so window sums are differences of cumulative sums.
    padded = F.pad(seeds, (block_width, block_width - 1, block_height, block_height - 1))
    rows = padded.cumsum(dim=-1)
    rows = rows[..., block_width:] - rows[..., :-block_width]
    windows = rows.cumsum(dim=-2)
    windows = windows[..., block_height:, :] - windows[..., :-block_height, :]
    return (windows > 0).to(seeds.dtype)


def seed_rate(drop_prob: float, height: int, width: int, block_height: int,
              block_width: int) -> float:
    """gamma: the seed probability that drops about ``drop_prob`` of the units (the paper's
    Eq. 1, for rectangular maps as timm)."""
    valid = (height - block_height + 1) * (width - block_width + 1)
    return min(1.0, drop_prob * height * width / (block_height * block_width) / valid)


def drop_block(x: torch.Tensor, drop_prob: float, block_size: int) -> torch.Tensor:
    """DropBlock on a [B, C, H, W] tensor: blocks dropped per example and channel, kept units
    scaled by numel / sum(kept mask)."""
    if drop_prob <= 0:
        return x
    batch, channels, height, width = x.shape
    block_height, block_width = min(block_size, height), min(block_size, width)
    gamma = seed_rate(drop_prob, height, width, block_height, block_width)
    seed_shape = (batch, channels, height - block_height + 1, width - block_width + 1)
    seeds = (torch.rand(seed_shape, device=x.device) < gamma).float()
    keep = 1 - block_mask(seeds, block_height, block_width)
    # float32 sums: a half-precision sum of a large map would overflow.
    scale = keep.numel() / keep.sum().clamp_min(1)
    return x * (keep * scale).to(x.dtype)


class DropBlock2d(nn.Module):
    """``drop_block`` as a layer, active in training mode only."""

    def __init__(self, drop_prob: float = 0.0, block_size: int = 7) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return drop_block(x, self.drop_prob, self.block_size)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


class DropBlockHook:
    """A forward hook that replaces a module's output by ``layer``'s while the module trains;
    ``share`` is its site's share of the scheduled drop rate."""

    def __init__(self, layer: DropBlock2d, share: float) -> None:
        self.layer = layer
        self.share = share

    def __call__(self, module: nn.Module, inputs: tuple,
                 output: torch.Tensor) -> Optional[torch.Tensor]:
        return self.layer(output) if module.training else None


def residual_groups(model: nn.Module) -> list[nn.Sequential]:
    """The model's stages of residual blocks (``feature_layers`` in order), or []."""
    from torchvision.models.resnet import BasicBlock  # see DEVELOPERS.md, "Start-up"

    layers = model.feature_layers().values() if isinstance(model, Classifier) else []
    return [layer for layer in layers if isinstance(layer, nn.Sequential) and len(layer) > 0
            and all(isinstance(block, BasicBlock) for block in layer)]


def residual_sites(groups: list[nn.Sequential]) -> list[tuple[nn.Module, float]]:
    """(module, share of the drop rate) for every block of the last two groups."""
    shared = ([(groups[-2], GROUP3_SHARE)] if len(groups) > 1 else []) + [(groups[-1], 1.0)]
    sites = []
    for group, share in shared:
        for block in group:
            shortcut = [] if block.downsample is None else [block.downsample]
            sites.extend((module, share) for module in [block.bn1, block.bn2, *shortcut])
    return sites


def last_conv_site(model: nn.Module) -> Optional[nn.Module]:
    """The module whose output is the last convolution's pre-activation: in the last block that
    holds a Conv2d and a ReLU, the layer before the ReLU; else the last Conv2d; None without."""
    blocks = [module for module in model.modules() if isinstance(module, nn.Sequential)
              and any(isinstance(child, nn.Conv2d) for child in module.children())
              and any(isinstance(child, nn.ReLU) for child in module.children())]
    if blocks:
        return before_activation(blocks[-1])
    convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    return convs[-1] if convs else None


def dropblock_sites(model: nn.Module) -> list[tuple[nn.Module, float]]:
    """Where DropBlock goes in ``model`` and at which share of the rate ([] for no conv maps)."""
    groups = residual_groups(model)
    if groups:
        return residual_sites(groups)
    site = last_conv_site(model)
    return [] if site is None else [(site, 1.0)]


@register_regularizer("dropblock", DropBlockConfig)
class DropBlock(Regularizer):
    def __init__(self, cfg: DropBlockConfig) -> None:
        super().__init__(cfg)
        self.model_name = ""  # for the refusal's message
        self.progress = 0.0  # of the latest training step; sets the rate of the next forward
        self.hooks: list[DropBlockHook] = []  # one per site

    def setup(self, context: RunContext) -> None:
        self.model_name = context.model

    def on_model_built(self, model: nn.Module) -> None:
        sites = dropblock_sites(model)
        if not sites:
            raise ConfigError(f"regularizer=dropblock is not allowed with model={self.model_name}: "
                              f"it drops blocks of convolutional feature maps, and this model has "
                              f"no convolution (use lenet, convnet, resnet, resnet18 or resnet34)")
        names = {id(module): name for name, module in model.named_modules()}
        for module, share in sites:
            hook = DropBlockHook(DropBlock2d(block_size=self.cfg.block_size), share)
            module.register_forward_hook(hook)
            self.hooks.append(hook)
        log.info("dropblock after %s", ", ".join(
            f"{names[id(module)]} (x{share:g})" for module, share in sites))
        self.set_progress(self.progress)

    def drop_rate(self, progress: float) -> float:
        """1 - keep probability at this fraction of training (of group 4 / the last conv)."""
        final = 1 - self.cfg.keep_prob
        return final * progress if self.cfg.linear_schedule else final

    def set_progress(self, progress: float) -> None:
        self.progress = progress
        for hook in self.hooks:
            hook.layer.drop_prob = hook.share * self.drop_rate(progress)

    def loss_terms(self, step: StepOutput) -> dict[str, torch.Tensor]:
        self.set_progress(step.progress)  # for the next step's forward: see the module docstring
        return {}

    def state_dict(self) -> dict[str, float]:
        return {"progress": self.progress}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.set_progress(state.get("progress", 0.0))
