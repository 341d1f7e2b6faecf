"""Datasets by name. Each module registers a loader that returns the official train/test splits."""

from __future__ import annotations

from typing import Callable

import torch

from regbench.config import DatasetConfig, check
from regbench.datasets.base import (
    DataBundle,
    RawSplits,
    corrupt_splits,
    input_shape,
    make_batches,
    split_train,
)
from regbench.datasets.crops import crop_batches, cropped_shape
from regbench.machine import available_cores
from regbench.registry import Registry, import_submodules

DATASETS: Registry[Callable[[DatasetConfig], RawSplits]] = Registry("dataset")

import_submodules(__name__, __path__)


def build_data(cfg: DatasetConfig, batch_size: int, device: torch.device, seed: int) -> DataBundle:
    raw = DATASETS.get(cfg.name)(cfg)
    # A classifier needs two classes at least (and calibration metrics are undefined for one).
    check(len(raw.classes) >= 2, "dataset", cfg.name,
          f"a dataset with 2 classes or more; found {len(raw.classes)} ({', '.join(raw.classes)})")
    train, val = split_train(cfg, raw.train)
    train, val, test = corrupt_splits(cfg, train, val, raw.test, len(raw.classes), seed)
    workers = available_cores() if cfg.num_workers is None else cfg.num_workers
    # Decodes one image for file-based datasets not in memory; stored images may be cropped.
    shape = cropped_shape(input_shape(raw.test), raw.crop_size)
    channels = shape[0]
    for key, values in (("dataset.mean", cfg.mean), ("dataset.std", cfg.std)):
        allowed = "1 value" if channels == 1 else f"1 or {channels} values"
        check(len(values) in (1, channels), key, list(values),
              f"{allowed} ({cfg.name} images have {channels} channel{'s' * (channels > 1)})")

    def batches(split, shuffle: bool):
        # Random crops of larger stored images for training, the centre crop for evaluation.
        made = make_batches(split, batch_size, shuffle, device, seed, workers)
        return crop_batches(made, raw.crop_size, random=shuffle)

    return DataBundle(
        train=batches(train, shuffle=True),
        val=batches(val, shuffle=False),
        test=batches(test, shuffle=False),
        train_eval=batches(train, shuffle=False),
        classes=raw.classes,
        input_shape=shape,
        mean=list(cfg.mean),
        std=list(cfg.std),
    )
