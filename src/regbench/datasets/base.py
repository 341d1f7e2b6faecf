"""What every dataset provides, the registry of loaders, and the batching shared by all of them.

A dataset module registers its loader with ``@register_dataset(name)``; every dataset shares the one
schema ``DatasetConfig`` (config/schema.py), its values set by ``configs/dataset/<name>.yaml``. A
loader returns its official train and test splits (``RawSplits``). ``build_data`` then
holds out ``val_size`` training examples (null: ``default_val_size``, 10 % of them, at most 5,000),
keeps the first ``train_size`` of the rest (both after one fixed shuffle), logs the three sizes in
one line and wraps each split in a batch iterator. Every iterator yields
``(uint8 images [B, C, H, W], int64 labels [B])``; conversion to float and normalization happen on
whole batches on the training device (``normalize``), so no per-sample Python runs for the
in-memory datasets.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from regbench.config import ConfigError, Corruption, DatasetConfig, check, one_line
from regbench.datasets.crops import crop_batches, cropped_shape
from regbench.files import exclusive_lock
from regbench.machine import available_cores
from regbench.registry import Registry

log = logging.getLogger(__name__)

# dataset.val_size=null holds out this share of the training split (scikit-learn's
# validation_fraction default for early stopping, MLPClassifier/SGDClassifier), at most VAL_CAP:
# the 5,000 of the published MNIST and CIFAR splits (55k/5k, 45k/5k; Guo et al. 2017 calibrate on
# them), beyond which a larger validation split mostly takes images from training.
VAL_SHARE = 0.1
VAL_CAP = 5000

class DatasetNotFoundError(ConfigError):
    """The dataset's files are missing and could not be downloaded."""


class CorruptDatasetError(ConfigError):
    """A dataset file exists but cannot be read."""


@dataclass
class ImageTensors:
    """A whole split in memory: small datasets (digits, MNIST family, CIFAR)."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "ImageTensors":
        return ImageTensors(self.images[indices], self.labels[indices])


# File-based datasets (pets, imagefolder) are ImageTensors when decoded into memory (cache.py), else
# torch Datasets of (uint8 [C, H, W] tensor, int label).
Split = Union[ImageTensors, Dataset]


@dataclass
class RawSplits:
    train: Split
    test: Split
    classes: list[str]
    # Stored images larger than the model's input: the square it sees (crops.py); None: all of it.
    crop_size: Optional[int] = None


Loader = Callable[[DatasetConfig], RawSplits]
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register a loader under ``name`` (the option ``dataset=<name>``)."""
    return DATASETS.register(name)


def missing_files_error(name: str, root: Path, expected: Sequence[str], how: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"dataset {name!r}: files not found under {root} (expected {', '.join(expected)}); {how}"
    )


def download_failure(error: BaseException) -> str:
    """Why a download failed, once: torchvision's MNIST repeats it for every mirror it tried
    ("Tried <url>, got: <reason> Tried <url>, got: <reason>")."""
    message = one_line(error)
    reasons = re.findall(r"got: (.+?)(?= Tried |$)", message)
    return reasons[-1] if reasons else message


# How a damaged downloaded file is replaced, said in every loader's one-line refusal.
REDOWNLOAD = "delete it and rerun with dataset.download=true"


def require_files(cfg: DatasetConfig, directory: Path, expected: Sequence[str],
                  fetch: Callable[[], object], how: str) -> None:
    """Download missing files when dataset.download allows it; refuse in one line if they stay missing.

    ``expected`` are paths relative to ``directory``; ``fetch`` runs torchvision's downloader;
    ``how`` tells the user how to get the files by hand.
    """

    def missing() -> list[str]:
        return [name for name in expected if not (directory / name).exists()]

    if not missing():
        return
    # The files may be elsewhere already: the root is the usual thing to fix.
    below_root = os.path.relpath(directory, cfg.root)
    holding = "them" if below_root == "." else f"{below_root}/"
    elsewhere = f"set dataset.root (or $REGBENCH_DATA) to a folder holding {holding}, or {how}"
    if not cfg.download:
        raise missing_files_error(cfg.name, directory, missing(),
                                  f"rerun with dataset.download=true, {elsewhere}")
    try:
        fetch_once(directory, fetch, missing)
    except (OSError, RuntimeError) as error:
        # Offline, urllib raises URLError (an OSError); torchvision's MNIST wraps it in RuntimeError.
        raise missing_files_error(cfg.name, directory, missing(),
                                  f"the download failed ({download_failure(error)}); {elsewhere}"
                                  ) from None
    if missing():
        raise missing_files_error(cfg.name, directory, missing(), elsewhere)


def fetch_once(directory: Path, fetch: Callable[[], object], missing: Callable[[], list]) -> None:
    """``fetch()`` under a file lock beside ``directory``: the jobs of a parallel sweep that start
    at once download the files once (the others wait, then find them), not each into the same
    folder at the same time."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = directory.parent / f".{directory.name}.download.lock"
    with exclusive_lock(lock, when_busy=lambda: log.info(
            "waiting for another process that is downloading into %s", directory), remove=True):
        if missing():
            fetch()


class TensorBatches:
    """Mini-batches of an in-memory split: one random permutation per epoch, indexed on device."""

    def __init__(self, data: ImageTensors, batch_size: int, shuffle: bool, drop_last: bool,
                 device: torch.device, seed: int = 0) -> None:
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last and len(data) > batch_size
        # A CPU generator keeps the data order identical on every device and easy to checkpoint.
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        for batch in range(len(self)):
            index = order[batch * self.batch_size:(batch + 1) * self.batch_size]
            # index_select is several times faster than advanced indexing for this gather.
            yield self.images.index_select(0, index), self.labels.index_select(0, index)


@dataclass
class DataBundle:
    train: object  # TensorBatches or DataLoader; both yield (uint8 images, labels)
    val: object
    test: object
    # The training split in evaluation order (no shuffle, no augmentation), for train metrics.
    train_eval: object
    classes: list[str]
    input_shape: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    val_size: int = 0  # examples held out for validation (dataset.val_size, null resolved)
    # dataset.classes: the test images of the other classes (batches, original labels), the
    # out-of-distribution set evaluation.ood=[held_out_classes]; None without dataset.classes.
    held_out: object = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def default_val_size(num_train: int) -> int:
    """dataset.val_size=null: VAL_SHARE of the training split, rounded up (one at least), at most
    VAL_CAP."""
    return min(VAL_CAP, math.ceil(num_train * VAL_SHARE))


def split_sizes(cfg: DatasetConfig, num_train: int) -> tuple[int, int]:
    """(validation size, training size) after checking them against the training split."""
    if cfg.val_size is None:
        val_size = default_val_size(num_train)
        if val_size >= num_train:  # a training split of one example
            raise ConfigError(f"dataset.val_size=null holds out {val_size} of the {num_train} "
                              f"training examples of {cfg.name}, leaving none to train on; set "
                              f"dataset.val_size=0")
    else:
        val_size = cfg.val_size
        check(val_size < num_train, "dataset.val_size", val_size,
              f"fewer than the {num_train} training examples of {cfg.name}")
    available = num_train - val_size
    train_size = available if cfg.train_size is None else cfg.train_size
    check(train_size <= available, "dataset.train_size", cfg.train_size,
          f"at most {available} ({num_train} training examples of {cfg.name} minus "
          f"dataset.val_size={val_size})")
    return val_size, train_size


def split_train(cfg: DatasetConfig, train: Split) -> tuple[Split, Split]:
    """Hold out validation examples, then keep the first train_size, after one fixed shuffle."""
    val_size, train_size = split_sizes(cfg, len(train))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.split_seed))
    val_index, train_index = order[:val_size], order[val_size:val_size + train_size]
    if isinstance(train, ImageTensors):
        return train.subset(train_index), train.subset(val_index)
    return Subset(train, train_index.tolist()), Subset(train, val_index.tolist())


def log_split_sizes(cfg: DatasetConfig, num_train: int, train: Split, val: Split, test: Split) -> None:
    """One line with every split's size, and what chose the validation size."""
    rule = (f"dataset.val_size=null: 10 % of {num_train}, at most {VAL_CAP}" if cfg.val_size is None
            else f"dataset.val_size={cfg.val_size}")
    kept = "" if cfg.train_size is None else f", dataset.train_size={cfg.train_size}"
    log.info("%s: %d training, %d validation (%s%s), %d test examples", cfg.name, len(train),
             len(val), rule, kept, len(test))


class RelabeledDataset(Dataset):
    """A file-based split whose labels are replaced (label noise)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor) -> None:
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.dataset[index][0], int(self.labels[index])


def split_labels(split: Split) -> torch.Tensor:
    if isinstance(split, ImageTensors):
        return split.labels
    if isinstance(split, Subset):
        return torch.as_tensor(split_labels_of_dataset(split.dataset))[split.indices]
    return torch.as_tensor(split_labels_of_dataset(split))


def split_labels_of_dataset(dataset: Dataset) -> list[int]:
    """Labels without decoding images: torchvision's ImageFolder has ``targets``, OxfordIIITPet ``_labels``."""
    for attribute in ("targets", "_labels", "labels"):
        if hasattr(dataset, attribute):
            return list(getattr(dataset, attribute))
    return [dataset[index][1] for index in range(len(dataset))]


def corrupt_labels(split: Split, fraction: float, num_classes: int, seed: int) -> Split:
    """Replace ``fraction`` of the labels by a uniformly random class (Zhang et al. 2017)."""
    labels = split_labels(split).clone()
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.rand(len(labels), generator=generator) < fraction
    labels[chosen] = torch.randint(0, num_classes, (int(chosen.sum()),), generator=generator)
    if isinstance(split, ImageTensors):
        return ImageTensors(split.images, labels)
    return RelabeledDataset(split, labels)


# --- Zhang et al. 2017's randomization tests on the images ------------------------------------

def pixel_permutation(num_pixels: int, seed: int) -> torch.Tensor:
    return torch.randperm(num_pixels, generator=torch.Generator().manual_seed(seed))


def permute_pixels(images: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] with the H*W pixel positions reordered (channels move together)."""
    n, c, h, w = images.shape
    return images.reshape(n, c, h * w)[:, :, permutation].reshape(n, c, h, w)


def permute_each_image(images: torch.Tensor, seed: int) -> torch.Tensor:
    """A different random permutation of the pixel positions for every image."""
    n, c, h, w = images.shape
    generator = torch.Generator().manual_seed(seed)
    # argsort of uniform keys gives one independent uniform permutation per row, in one call.
    order = torch.rand(n, h * w, generator=generator).argsort(dim=1)
    flat = images.reshape(n, c, h * w)
    return flat.gather(2, order[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)


def gaussian_images(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Gaussian noise with the images' per-channel mean and std (in [0, 1]), clipped and quantized
    back to uint8 like the real pixels."""
    pixels = images.double() / 255
    mean = pixels.mean(dim=(0, 2, 3), keepdim=True)
    std = pixels.std(dim=(0, 2, 3), keepdim=True)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float64) * std + mean
    return (noise.clamp(0, 1) * 255).round().to(torch.uint8)


def require_in_memory(split: Split, cfg: DatasetConfig) -> ImageTensors:
    if not isinstance(split, ImageTensors):
        raise ConfigError(f"dataset.corruption={cfg.corruption.value!r} is not allowed with "
                          f"dataset={cfg.name}: pixel corruptions need an in-memory dataset "
                          f"(digits, mnist, fashion_mnist, cifar10, cifar100)")
    return split


def corrupt_splits(cfg: DatasetConfig, train: Split, val: Split, test: Split, num_classes: int,
                   seed: int) -> tuple[Split, Split, Split]:
    """dataset.corruption applied: training images (and labels) changed; validation and test only
    by shuffled_pixels, whose one permutation every split shares."""
    fraction = cfg.label_noise_fraction
    if fraction > 0:
        train = corrupt_labels(train, fraction, num_classes, seed)
    if cfg.corruption in (Corruption.none, Corruption.random_labels):
        return train, val, test
    train = require_in_memory(train, cfg)
    if cfg.corruption == Corruption.shuffled_pixels:
        h, w = train.images.shape[2:]
        permutation = pixel_permutation(h * w, seed)

        def shuffled(split: ImageTensors) -> ImageTensors:
            return ImageTensors(permute_pixels(split.images, permutation), split.labels)

        return shuffled(train), shuffled(require_in_memory(val, cfg)), \
            shuffled(require_in_memory(test, cfg))
    if cfg.corruption == Corruption.random_pixels:
        return ImageTensors(permute_each_image(train.images, seed), train.labels), val, test
    return ImageTensors(gaussian_images(train.images, seed), train.labels), val, test


def make_batches(split: Split, batch_size: int, shuffle: bool, device: torch.device, seed: int,
                 num_workers: int) -> object:
    if isinstance(split, ImageTensors):
        return TensorBatches(split, batch_size, shuffle=shuffle, drop_last=shuffle, device=device,
                             seed=seed)
    return DataLoader(
        split, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle and len(split) > batch_size,
        num_workers=num_workers, pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
    )


def input_shape(split: Split) -> tuple[int, int, int]:
    if isinstance(split, ImageTensors):
        return tuple(split.images.shape[1:])
    return tuple(split[0][0].shape)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 normalized, on the images' device."""
    from torchvision.transforms.v2 import (
        functional as TF,  # see DEVELOPERS.md, "Start-up"
    )

    converted = TF.to_dtype(images, torch.float32, scale=True)
    # In place when the conversion made a new tensor: one buffer per batch instead of two.
    return TF.normalize(converted, list(mean), list(std), inplace=converted is not images)


def select_split(split: Split, indices: torch.Tensor, labels: torch.Tensor) -> Split:
    """The examples at ``indices`` of a split, with ``labels`` (one per index) as their labels."""
    if isinstance(split, ImageTensors):
        return ImageTensors(split.images[indices], labels)
    return RelabeledDataset(Subset(split, indices.tolist()), labels)


def keep_classes(cfg: DatasetConfig, raw: RawSplits) -> tuple[RawSplits, Optional[Split]]:
    """dataset.classes: train and test splits restricted to those classes, labels renumbered
    0..k-1 in the order listed, and the other classes' test images (labels as loaded) for the
    held_out_classes OOD set; the splits unchanged and None when dataset.classes is null."""
    if cfg.classes is None:
        return raw, None
    count = len(raw.classes)
    check(all(index < count for index in cfg.classes), "dataset.classes", list(cfg.classes),
          f"class indices 0..{count - 1} of {cfg.name} ({', '.join(raw.classes)})")
    new_label = torch.full((count,), -1, dtype=torch.int64)
    new_label[torch.tensor(cfg.classes)] = torch.arange(len(cfg.classes))

    def kept(split: Split) -> Split:
        labels = new_label[split_labels(split)]
        indices = torch.nonzero(labels >= 0).squeeze(1)
        return select_split(split, indices, labels[indices])

    test_labels = split_labels(raw.test)
    held_out = torch.nonzero(new_label[test_labels] < 0).squeeze(1)
    restricted = RawSplits(kept(raw.train), kept(raw.test), [raw.classes[i] for i in cfg.classes],
                           raw.crop_size)
    check(len(restricted.test) > 0, "dataset.classes", list(cfg.classes),
          f"classes with test images ({cfg.name}'s test split has none of these)")
    return restricted, select_split(raw.test, held_out, test_labels[held_out])


def build_data(cfg: DatasetConfig, batch_size: int, device: torch.device, seed: int) -> DataBundle:
    raw = DATASETS.get(cfg.name)(cfg)
    # A classifier needs two classes at least (and calibration metrics are undefined for one).
    check(len(raw.classes) >= 2, "dataset", cfg.name,
          f"a dataset with 2 classes or more; found {len(raw.classes)} ({', '.join(raw.classes)})")
    raw, held_out = keep_classes(cfg, raw)
    train, val = split_train(cfg, raw.train)
    log_split_sizes(cfg, len(raw.train), train, val, raw.test)
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
        val_size=len(val),
        held_out=None if held_out is None else batches(held_out, shuffle=False),
    )
