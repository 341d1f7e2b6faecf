"""scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set, 1797 images).

Real data that ships with scikit-learn, so the default run needs no download. There is no official
split: a fixed, stratified 80/20 split gives 1437 training and 360 test images.
"""

from __future__ import annotations

import torch

from regbench.config import DatasetConfig
from regbench.datasets.base import ImageTensors, RawSplits, register_dataset

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@register_dataset("digits")
def load_digits(cfg: DatasetConfig) -> RawSplits:
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    # Pixels are integers 0..16; scale to the 0..255 range every other dataset uses.
    images = torch.from_numpy(bunch.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    train_index, test_index = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION, random_state=SPLIT_SEED,
        stratify=labels.numpy(),
    )
    train_index, test_index = torch.from_numpy(train_index), torch.from_numpy(test_index)
    return RawSplits(
        train=ImageTensors(images[train_index], labels[train_index]),
        test=ImageTensors(images[test_index], labels[test_index]),
        classes=[str(digit) for digit in range(10)],
    )
