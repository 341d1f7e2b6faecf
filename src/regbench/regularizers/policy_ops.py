"""What the augmentation policies share (autoaugment, randaugment, trivialaugment, augmix): the
operation table, the per-image batching core and the regularizer base class.

Why per-image batching is written here. torchvision's v2 policies (AutoAugment, RandAugment,
TrivialAugmentWide, AugMix) draw their operations and magnitudes ONCE per call (``make_params`` /
``forward`` draw one set; checked with torchvision 0.29: every image of a RandAugment output batch
went through the same two operations), so called on a [B, C, H, W] batch they augment every image
the same way, which is not augmentation per example. The usual fix is a DataLoader calling them on
one image at a time in worker processes. Here each image draws its own operations and magnitudes,
and the pixel work stays torchvision's: the images of a batch are grouped by (operation, magnitude
bin, sign), each group goes through ONE call of the ``torchvision.transforms.v2.functional``
operation on its stacked images (every one of these acts on each image of a stack independently,
so the result is exactly the per-image call's; tests/regularizers/test_policy_ops.py checks it),
and the results are put back in batch order. Magnitudes come from a discrete grid of bins (31 for
RandAugment, TrivialAugment; 10 for AutoAugment, AugMix), which keeps the number of groups small.

The operations and their magnitude ranges are torchvision 0.29's
(``transforms/v2/_auto_augment.py``, ``_AUGMENTATION_SPACE`` of each policy, which follow the
papers' tables), written out here because torchvision keeps them private; tests check them against
torchvision's. One deliberate difference:
TrivialAugment Wide translates by up to 32 px on any image (torchvision), here by up to the image's
width or height, which is the same 32 px on the 32 px CIFAR images the wide space was defined for
(Müller & Hutter 2021, Table 1) and keeps an 8 px digit from being shifted out of the frame in most
translations. AutoAugment's and RandAugment's translations are 150/331 of the width or height
(torchvision; AutoAugment's 150 px on 331 px ImageNet images), AugMix's 1/3.

Images: uint8 [B, C, H, W] with 1 (gray) or 3 (RGB) channels, what torchvision's colour
operations accept. "Color" (saturation) means nothing on gray images; on them it is left out of the
operations drawn (RandAugment, TrivialAugment, AugMix), and an AutoAugment sub-policy's Color step
does nothing; which operations are skipped is logged once. The draws use torch's global CPU
generator (seeded by the run, saved in its checkpoints), so a resumed run draws what it would have.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch

from regbench.config import ConfigError
from regbench.regularizers.base import Regularizer

log = logging.getLogger(__name__)

# (number of bins, height, width) -> the magnitude of each bin
MagnitudeRange = Callable[[int, int, int], torch.Tensor]


def linear(start: float, end: float) -> MagnitudeRange:
    return lambda bins, height, width: torch.linspace(start, end, bins)


def share_of_width(share: float) -> MagnitudeRange:
    return lambda bins, height, width: torch.linspace(0.0, share * width, bins)


def share_of_height(share: float) -> MagnitudeRange:
    return lambda bins, height, width: torch.linspace(0.0, share * height, bins)


def posterize_bits(most: int, fewest: int) -> MagnitudeRange:
    """Bits kept, from ``most`` at bin 0 down to ``fewest`` at the last bin, rounded."""
    drop = most - fewest
    return lambda bins, height, width: (
        most - torch.arange(bins) / ((bins - 1) / drop)).round().int()


@dataclass(frozen=True)
class Operation:
    name: str
    magnitudes: Optional[MagnitudeRange] = None  # None: the operation takes no magnitude
    signed: bool = False  # the magnitude is negated with probability 1/2
    needs_colour: bool = False  # meaningless on gray images


def operations(translate_x: MagnitudeRange, translate_y: MagnitudeRange, shear: float,
               rotate: float, enhance: float, posterize: MagnitudeRange, colour_ops: bool,
               identity: bool, invert: bool) -> tuple[Operation, ...]:
    """One policy's operation space in torchvision's order (the order draws index into)."""
    enhance_range = linear(0.0, enhance)
    ops = [Operation("Identity")] if identity else []
    ops += [Operation("ShearX", linear(0.0, shear), True),
            Operation("ShearY", linear(0.0, shear), True),
            Operation("TranslateX", translate_x, True), Operation("TranslateY", translate_y, True),
            Operation("Rotate", linear(0.0, rotate), True)]
    if colour_ops:
        ops += [Operation("Brightness", enhance_range, True),
                Operation("Color", enhance_range, True, needs_colour=True),
                Operation("Contrast", enhance_range, True),
                Operation("Sharpness", enhance_range, True)]
    ops += [Operation("Posterize", posterize), Operation("Solarize", linear(1.0, 0.0)),
            Operation("AutoContrast"), Operation("Equalize")]
    if invert:
        ops.append(Operation("Invert"))
    return tuple(ops)


def augmix_operations(all_ops: bool) -> tuple[Operation, ...]:
    """AugMix's nine operations (Hendrycks et al. 2020, augmentations.py), then with ``all_ops`` the
    four that overlap the corruptions of ImageNet-C/CIFAR-C, in torchvision's order."""
    ops = operations(share_of_width(1 / 3), share_of_height(1 / 3), 0.3, 30.0, 0.9,
                     posterize_bits(4, 0), colour_ops=False, identity=False, invert=False)
    if not all_ops:
        return ops
    enhance = linear(0.0, 0.9)
    return ops + (Operation("Brightness", enhance, True), Operation("Color", enhance, True, True),
                  Operation("Contrast", enhance, True), Operation("Sharpness", enhance, True))


AUTOAUGMENT_OPS = operations(share_of_width(150 / 331), share_of_height(150 / 331), 0.3, 30.0, 0.9,
                             posterize_bits(8, 4), colour_ops=True, identity=False, invert=True)
RANDAUGMENT_OPS = operations(share_of_width(150 / 331), share_of_height(150 / 331), 0.3, 30.0, 0.9,
                             posterize_bits(8, 4), colour_ops=True, identity=True, invert=False)
TRIVIALAUGMENT_WIDE_OPS = operations(share_of_width(1.0), share_of_height(1.0), 0.99, 135.0, 0.99,
                                     posterize_bits(8, 2), colour_ops=True, identity=True,
                                     invert=False)


# --- the pixel work: torchvision's functional operations ---------------------------------------

def functional():
    from torchvision.transforms.v2 import functional as TF  # see DEVELOPERS.md, "Start-up"

    return TF


def affine(images: torch.Tensor, interpolation: str, translate=(0, 0), shear=(0.0, 0.0),
           center=None) -> torch.Tensor:
    return functional().affine(images, angle=0.0, translate=list(translate), scale=1.0,
                               shear=list(shear), interpolation=interpolation, center=center)


# name -> f(images, magnitude, interpolation). The semantics are the policies' as torchvision
# defines them: shear by atan(m) degrees about the top-left corner (the AutoAugment paper's PIL
# affine (1, m, 0, 0, 1, 0)), translations by int(m) px, enhancements by the factor 1 + m,
# posterize to int(m) bits, solarize above m times the largest value.
PIXEL_OPERATIONS: dict[str, Callable[[torch.Tensor, float, str], torch.Tensor]] = {
    "Identity": lambda x, m, i: x,
    "ShearX": lambda x, m, i: affine(x, i, shear=(math.degrees(math.atan(m)), 0.0), center=[0, 0]),
    "ShearY": lambda x, m, i: affine(x, i, shear=(0.0, math.degrees(math.atan(m))), center=[0, 0]),
    "TranslateX": lambda x, m, i: affine(x, i, translate=(int(m), 0)),
    "TranslateY": lambda x, m, i: affine(x, i, translate=(0, int(m))),
    "Rotate": lambda x, m, i: functional().rotate(x, angle=m, interpolation=i),
    "Brightness": lambda x, m, i: functional().adjust_brightness(x, brightness_factor=1.0 + m),
    "Color": lambda x, m, i: functional().adjust_saturation(x, saturation_factor=1.0 + m),
    "Contrast": lambda x, m, i: functional().adjust_contrast(x, contrast_factor=1.0 + m),
    "Sharpness": lambda x, m, i: functional().adjust_sharpness(x, sharpness_factor=1.0 + m),
    "Posterize": lambda x, m, i: functional().posterize(x, bits=int(m)),
    "Solarize": lambda x, m, i: functional().solarize(x, threshold=255.0 * m),  # uint8: max 255
    "AutoContrast": lambda x, m, i: functional().autocontrast(x),
    "Equalize": lambda x, m, i: functional().equalize(x),
    "Invert": lambda x, m, i: functional().invert(x),
}


# --- per-image batching --------------------------------------------------------------------------

@dataclass
class Draws:
    """One step of a policy for every image of a batch: which operation (an index into the
    table's operations; -1 leaves the image as it is), which magnitude bin, and whether the
    magnitude is negated (only for signed operations). CPU tensors [N]."""

    ops: torch.Tensor
    bins: torch.Tensor
    negate: torch.Tensor


class OperationTable:
    """A policy's operations at one image size: the magnitude of every bin, and ``apply``, which
    gives every image its own operation and magnitude."""

    def __init__(self, ops: tuple[Operation, ...], num_bins: int, height: int, width: int,
                 interpolation: str) -> None:
        self.ops = ops
        self.num_bins = num_bins
        self.interpolation = interpolation
        self.magnitudes = [None if op.magnitudes is None else op.magnitudes(num_bins, height, width)
                           for op in ops]
        # Indexed by op + 1 (0: untouched): which draws' bins and signs make a difference.
        self.has_magnitude = torch.tensor([False] + [m is not None for m in self.magnitudes])
        self.signed = torch.tensor([False] + [op.signed for op in ops])

    def magnitude(self, op: int, bin_index: int, negate: bool) -> float:
        """The magnitude torchvision would use: the bin's value as a Python float, negated."""
        values = self.magnitudes[op]
        value = 0.0 if values is None else float(values[bin_index])
        return -value if negate else value

    def group_keys(self, draws: Draws) -> torch.Tensor:
        """One integer per image, equal for images that get the same operation and magnitude."""
        slot = draws.ops + 1
        bins = torch.where(self.has_magnitude[slot], draws.bins, 0)
        negate = draws.negate & self.signed[slot]
        return (slot * self.num_bins + bins) * 2 + negate.long()

    def apply(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Each image through its drawn operation: one torchvision call per group of equal draws,
        on the group's images stacked (sorted by group, so every group is one slice), then put
        back in batch order."""
        keys = self.group_keys(draws)
        order = torch.argsort(keys, stable=True)
        groups, counts = torch.unique_consecutive(keys[order], return_counts=True)
        if groups.tolist() == [0]:
            return images  # no image drew an operation
        index = order.to(images.device, non_blocking=True)
        pieces = images.index_select(0, index).split(counts.tolist())
        done = [self.apply_group(piece, key) for piece, key in zip(pieces, groups.tolist())]
        return torch.empty_like(images).index_copy_(0, index, torch.cat(done))

    def apply_group(self, images: torch.Tensor, key: int) -> torch.Tensor:
        slot, rest = divmod(key, 2 * self.num_bins)
        if slot == 0:
            return images
        op = slot - 1
        magnitude = self.magnitude(op, rest // 2, bool(rest % 2))
        return PIXEL_OPERATIONS[self.ops[op].name](images, magnitude, self.interpolation)


def random_signs(shape: tuple[int, ...]) -> torch.Tensor:
    """Signed magnitudes are negated with probability 1/2 (torchvision: ``rand() <= 0.5``)."""
    return torch.rand(shape) < 0.5


# --- the regularizers' shared part ---------------------------------------------------------------

class PolicyRegularizer(Regularizer):
    """A policy on uint8 training batches. Subclasses set ``ops``, ``num_bins`` and
    ``interpolation`` and write ``augment(images)``; ``table(images)`` checks the batch and gives
    the operation table for its size, with the operations that make no sense for its channels left
    out (``usable_ops``; logged once)."""

    ops: ClassVar[tuple[Operation, ...]]
    interpolation: ClassVar[str] = "nearest"  # torchvision's default for AutoAugment/RandAugment/TA

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.tables: dict[tuple[int, int, int], OperationTable] = {}
        self.usable_ops: tuple[Operation, ...] = ()

    @property
    def num_bins(self) -> int:
        return self.cfg.num_magnitude_bins

    def check_images(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8:
            raise ConfigError(f"regularizer.{self.name} needs uint8 images but got {images.dtype} "
                              f"ones from the regularizer listed before it (mixup makes float "
                              f"images): list {self.name} before mixup in regularizer=[...]")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(f"regularizer.{self.name} needs gray or RGB images [B, 1 or 3, H, W] "
                              f"(torchvision's colour operations); got a batch of shape "
                              f"{list(images.shape)}")

    def table(self, images: torch.Tensor) -> OperationTable:
        channels, height, width = images.shape[1:]
        key = (channels, height, width)
        if key not in self.tables:
            self.usable_ops = self.choose_ops(channels)
            self.tables[key] = OperationTable(self.usable_ops, self.num_bins, height, width,
                                              self.interpolation)
        return self.tables[key]

    def choose_ops(self, channels: int) -> tuple[Operation, ...]:
        skipped = [op.name for op in self.ops if op.needs_colour and channels == 1]
        if skipped and not self.tables:
            log.info("%s: %d-channel images, so %s skipped (saturation needs colour)", self.name,
                     channels, ", ".join(skipped))
        return tuple(op for op in self.ops if not (op.needs_colour and channels == 1))

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transform_batch(self, images: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_images(images)
        return self.augment(images), labels
