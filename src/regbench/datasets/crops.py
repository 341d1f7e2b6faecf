"""The model's square input cut from larger stored images, on whole batches.

File-based datasets store images a little larger than the model's input (256 for 224, see
imagefolder.py's ``Sizing``), as torchvision's classification reference does. Training batches get
one uniformly random crop per image, evaluation batches the centre crop (the reference's eval
transform), both on whole uint8 batches on the device the batches are on, before regularizers'
``transform_batch`` (so the augmentation regularizer pads and crops the cropped batch, as on CIFAR).
torchvision's v2 ``RandomCrop`` draws one offset per batch, not per image (see
regularizers/augmentation.py), hence the per-image gather here.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch


def random_square_crops(images: torch.Tensor, size: int) -> torch.Tensor:
    """Each image of a [B, C, H, W] batch cropped to ``size`` x ``size`` at its own random offset."""
    batch, channels, height, width = images.shape
    if (height, width) == (size, size):
        return images
    device = images.device
    top = torch.randint(0, height - size + 1, (batch, 1), device=device)
    left = torch.randint(0, width - size + 1, (batch, 1), device=device)
    rows = (top + torch.arange(size, device=device)).view(batch, 1, size, 1)
    cols = (left + torch.arange(size, device=device)).view(batch, 1, 1, size)
    # Row window first (all columns kept), then the column window of those rows.
    cropped = images.gather(2, rows.expand(-1, channels, -1, width))
    return cropped.gather(3, cols.expand(-1, channels, size, -1))


class CroppedBatches:
    """Batches of ``batches`` (TensorBatches or DataLoader) cropped to ``size``: at random per
    image (training) or the centre (evaluation). Other attributes (``generator``, ``dataset``)
    are the wrapped iterator's, so checkpoints and benchmarks see it as before."""

    def __init__(self, batches: Any, size: int, random: bool) -> None:
        self.batches, self.size, self.random = batches, size, random

    def __len__(self) -> int:
        return len(self.batches)

    def __getattr__(self, name: str) -> Any:
        if name == "batches":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.batches, name)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from torchvision.transforms.v2 import (
            functional as TF,  # see DEVELOPERS.md, "Start-up"
        )

        for images, labels in self.batches:
            if self.random:
                yield random_square_crops(images, self.size), labels
            else:
                yield TF.center_crop(images, [self.size]), labels


def crop_batches(batches: Any, size: int | None, random: bool) -> Any:
    """``batches`` cropped to ``size`` (None: the images are used whole)."""
    return batches if size is None else CroppedBatches(batches, size, random)


def cropped_shape(shape: tuple[int, int, int], size: int | None) -> tuple[int, int, int]:
    return shape if size is None else (shape[0], size, size)
