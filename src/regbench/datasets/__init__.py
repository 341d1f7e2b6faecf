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
    workers = cfg.num_workers
    shape = input_shape(raw.test)  # decodes one image for file-based datasets
    channels = shape[0]
    for key, values in (("dataset.mean", cfg.mean), ("dataset.std", cfg.std)):
        allowed = "1 value" if channels == 1 else f"1 or {channels} values"
        check(len(values) in (1, channels), key, list(values),
              f"{allowed} ({cfg.name} images have {channels} channel{'s' * (channels > 1)})")

    def batches(split, shuffle: bool):
        return make_batches(split, batch_size, shuffle, device, seed, workers)

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
