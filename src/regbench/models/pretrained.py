"""Pretrained weights for the torchvision ResNets (``model.weights``): ImageNet weights through
torchvision's weights API, or a local state-dict file; the input statistics that go with them; and
what the regularizers may do to a pretrained body.

``model.weights=imagenet`` loads ``weights.get_state_dict(check_hash=True)`` of the enum below:
torch.hub keeps the file in ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``, read when
called; ``~/.cache/torch`` without TORCH_HOME) under the URL's file name, downloads it once (the
SHA-256 prefix in the name is checked then; a cached file is not re-checked) and reuses it in every
later run. torch.hub writes a download to a temporary ``.partial`` file and renames it, so a reader
never sees half a file; several jobs of a sweep starting at once would still each download it, so
the download is done under a file lock (files.exclusive_lock) and the others wait, then load it.
Offline, or with ``model.download=false``, a missing file is refused in one line naming the file,
its URL and the folder to put it in.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from regbench.config import ConfigError, check, one_line
from regbench.files import exclusive_lock

if TYPE_CHECKING:  # see DEVELOPERS.md, "Start-up"
    from torchvision.models import WeightsEnum

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
# torchvision's ImageNet weights (torchvision/models/resnet.py): each model's DEFAULT in
# torchvision 0.13+, which is what fastai's vision_learner loads (fastai/vision/learner.py,
# _resnet_meta weights='DEFAULT'); named here so that a later torchvision changing its DEFAULT
# does not change a run. ResNet-50's V2 (80.858 % top-1) is torchvision's newer recipe; V1 is
# 76.130 %.
IMAGENET_WEIGHTS = {
    "resnet18": ("ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet34": ("ResNet34_Weights", "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V2"),
}
# A value of model.weights that names a file: it has a folder or a file suffix (weights.pth).
PATH_PATTERN = re.compile(r"[/\\~.]")


def check_weights(key: str, value: Optional[str]) -> None:
    """model.weights: null, imagenet or a file; any other name is refused before training."""
    if value is None or value == IMAGENET or PATH_PATTERN.search(value):
        return
    check(Path(value).is_file(), key, value,
          f"null (random initialization), {IMAGENET} (torchvision's ImageNet weights) or the path "
          f"of a state-dict file in torchvision's format (e.g. ./resnet34.pth)")


def weights_enum(model_name: str) -> "WeightsEnum":
    import torchvision.models  # see DEVELOPERS.md, "Start-up"

    enum_name, member = IMAGENET_WEIGHTS[model_name]
    return getattr(torchvision.models, enum_name)[member]


def checkpoint_folder() -> Path:
    """Where torch.hub keeps downloaded weights, as torch.hub computes it at this moment."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_file(weights: "WeightsEnum") -> Path:
    """The file torch.hub keeps ``weights`` in (the URL's file name in checkpoint_folder)."""
    return checkpoint_folder() / os.path.basename(weights.url)


def missing_file(weights: "WeightsEnum", why: str, remedy: str) -> ConfigError:
    file = cached_file(weights)
    return ConfigError(f"model.weights={IMAGENET}: {file.name} is not in {file.parent} and {why}; "
                       f"download it from {weights.url} into that folder ({remedy})")


def check_downloadable(model_name: str, download: bool) -> None:
    """Before anything runs: with model.download=false the ImageNet file must be there already."""
    if not download and not cached_file(weights_enum(model_name)).is_file():
        raise missing_file(weights_enum(model_name), "model.download=false",
                           "or rerun with model.download=true")


def imagenet_state_dict(model_name: str, download: bool) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``model_name`` from torch.hub's cache, downloaded once if
    missing and ``download`` allows; refused in one line otherwise."""
    weights = weights_enum(model_name)
    file = cached_file(weights)
    if not file.is_file():
        check_downloadable(model_name, download)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            with exclusive_lock(file.with_name(f"{file.name}.lock"), when_busy=lambda: log.info(
                    "waiting for another process that is downloading %s", file.name), remove=True):
                return load(weights, progress=sys.stderr.isatty())
        except (OSError, RuntimeError) as error:
            # urllib's URLError is an OSError; a wrong hash is torch.hub's RuntimeError.
            raise missing_file(weights, f"the download failed ({one_line(error)})",
                               "or connect to the internet") from None
    try:
        return load(weights, progress=False)
    except Exception as error:  # unpickling errors come in many types; all mean a damaged file
        raise ConfigError(f"model.weights={IMAGENET}: {file} is not a readable state dict "
                          f"({one_line(error)}); delete it to download it again, or download it "
                          f"from {weights.url}") from None


def load(weights: "WeightsEnum", progress: bool) -> dict[str, torch.Tensor]:
    """torchvision's own path: torch.hub's cache, downloading (hash-checked) if the file is
    missing; weights_only because the file comes from the network."""
    if not cached_file(weights).is_file():  # another process may have downloaded it meanwhile
        log.info("model.weights=%s: downloading %s (%.0f MiB) into %s", IMAGENET, weights.url,
                 weights.meta.get("_file_size", float("nan")), checkpoint_folder())
    return weights.get_state_dict(progress=progress, check_hash=True, weights_only=True)


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """A local state-dict file (``key``: the setting that named it), refused in one line unless
    it is one."""
    if not path.is_file():
        raise ConfigError(f"{key}={str(path)!r} is not allowed: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types; all mean "not a state dict"
        raise ConfigError(f"{key}={str(path)!r} is not allowed: not a readable state dict "
                          f"({one_line(error)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{key}={str(path)!r} is not allowed: the file holds no state dict "
                          f"(a mapping of parameter names to tensors)")
    return state


def input_statistics(model_name: str, channels: int) -> tuple[list[float], list[float]]:
    """The mean and std the pretrained weights expect: those of the ImageNet weights' preset
    (torchvision's ImageClassification: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)),
    also for a local file in torchvision's format. A 1-channel model gets the means of the three
    (0.449, 0.226), an approximation: the summed RGB filters applied to a gray image equal the RGB
    network applied to that image in all three channels only when all three are normalized alike.
    With these values each channel's scale is off by at most 1.3 % (0.226 / 0.229 ... 0.226 /
    0.224) and its shift by up to 0.18 std (blue: 0.449 / 0.226 - 0.406 / 0.225); a shift gives
    each filter of the first convolution a constant offset (away from the zero-padded border),
    which the BatchNorm right after it removes in training mode (not frozen with train_bn=false)."""
    preset = weights_enum(model_name).transforms()
    mean, std = list(preset.mean), list(preset.std)
    if channels == 3:
        return mean, std
    return [round(sum(mean) / 3, 6)] * channels, [round(sum(std) / 3, 6)] * channels


# BatchNorm's eps in torchvision's ResNets when the ImageNet weights were trained (nn.BatchNorm2d's
# default): a body built with another eps would not compute what the weights were trained for.
PRETRAINED_BN_EPS = 1e-5
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def check_pretrained_norms(net: nn.Module, label: str) -> None:
    """Refuse, in one line, a normalization regularizer that would change the pretrained body's
    BatchNorm layers (another layer type, or another eps); their momentum only sets how fast the
    running statistics follow the new data while they train, so it is honoured."""
    for module in net.modules():
        if not isinstance(module, NORM_TYPES):
            continue
        if not isinstance(module, nn.BatchNorm2d):
            raise ConfigError(f"model.weights={label} is not allowed with a normalization "
                              f"regularizer that replaces the pretrained BatchNorm2d layers with "
                              f"{type(module).__name__}: the weights were trained with BatchNorm")
        if module.eps != PRETRAINED_BN_EPS:
            raise ConfigError(f"regularizer.batchnorm.eps={module.eps!r} is not allowed with "
                              f"model.weights={label}: the pretrained BatchNorm layers were "
                              f"trained with eps={PRETRAINED_BN_EPS} (keep the default)")


def describe_pretrained_body(label: str, model: nn.Module, head: str) -> None:
    """One log line: what the regularizers do to the pretrained body (``model.body``: input,
    resnet, dropout on the pooled features), and what the head is."""
    from torchvision.ops import StochasticDepth  # see DEVELOPERS.md, "Start-up"

    from regbench.models.layers import DROPOUT_LAYERS

    trunk = [*model.body.input.modules(), *model.body.resnet.modules()]
    norms = [m for m in trunk if isinstance(m, nn.BatchNorm2d)]
    dropouts = sum(isinstance(m, DROPOUT_LAYERS) for m in trunk)
    dropped_blocks = sum(isinstance(m, StochasticDepth) for m in trunk)
    extras = [f"{dropouts} dropout layer{'s' * (dropouts != 1)}"] * (dropouts > 0) + [
        f"stochastic depth on {dropped_blocks} residual blocks"] * (dropped_blocks > 0)
    added = (f"; the regularizers add {' and '.join(extras)} to it, acting in training only (no "
             f"parameters: the loaded network is unchanged at test time)") if extras else ""
    if isinstance(model.body.dropout, DROPOUT_LAYERS):
        head += f", after {type(model.body.dropout).__name__} on the pooled features"
    momentum = norms[0].momentum if norms else None
    log.info("model.weights=%s: the body starts from the loaded weights (its %d BatchNorm layers "
             "with their loaded statistics, momentum %s while they train)%s; the head: %s",
             label, len(norms), momentum, added, head)
