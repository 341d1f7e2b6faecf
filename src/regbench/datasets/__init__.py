"""Datasets by name. Each module registers a loader that returns the official train/test splits."""

from __future__ import annotations

from typing import Callable

import torch

from regbench.config import DatasetConfig
from regbench.datasets.base import (
    DataBundle,
    RawSplits,
    corrupt_labels,
    input_shape,
    make_batches,
    split_train,
)
from regbench.registry import Registry, import_submodules

DATASETS: Registry[Callable[[DatasetConfig], RawSplits]] = Registry("dataset")

import_submodules(__name__, __path__)


def build_data(cfg: DatasetConfig, batch_size: int, device: torch.device, seed: int) -> DataBundle:
    raw = DATASETS.get(cfg.name)(cfg)
    train, val = split_train(cfg, raw.train)
    if cfg.label_noise > 0:
        train = corrupt_labels(train, cfg.label_noise, len(raw.classes), seed)
    workers = cfg.num_workers

    def batches(split, shuffle: bool, offset: int = 0):
        return make_batches(split, batch_size, shuffle, device, seed + offset, workers)

    return DataBundle(
        train=batches(train, shuffle=True),
        val=batches(val, shuffle=False),
        test=batches(raw.test, shuffle=False),
        train_eval=batches(train, shuffle=False),
        classes=raw.classes,
        input_shape=input_shape(raw.test),
        mean=list(cfg.mean),
        std=list(cfg.std),
    )
