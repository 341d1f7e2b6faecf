"""CIFAR-10 and CIFAR-100: 50,000 training and 10,000 test 32x32 RGB images, 10 or 100 classes.

torchvision's dataset classes find (and, when allowed, download) the python pickle batches under
``<root>/cifar-10-batches-py`` and ``<root>/cifar-100-python``, check their md5 sums against the
official release and unpickle them; the whole split is kept in memory as one uint8 tensor.
CIFAR-100 uses its 100 fine labels.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from regbench.config import DatasetConfig, one_line
from regbench.datasets.base import (
    REDOWNLOAD,
    CorruptDatasetError,
    ImageTensors,
    RawSplits,
    register_dataset,
    require_files,
)

if TYPE_CHECKING:  # torchvision is imported where it is used: DEVELOPERS.md, "Start-up"
    from torchvision.datasets import CIFAR10

# What unpickling a truncated or garbled batch raises, besides UnpicklingError.
PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, AttributeError,
                 IndexError)


def checksums(dataset_class: type[CIFAR10]) -> dict[str, str]:
    """File name -> md5 of the official release, for every batch and the meta file."""
    files = dict(dataset_class.train_list + dataset_class.test_list)
    files[dataset_class.meta["filename"]] = dataset_class.meta["md5"]
    return files


def unpicklable(paths: list[Path]) -> Path | None:
    """The first file that does not unpickle (used only to name it in the error)."""
    for path in paths:
        try:
            with open(path, "rb") as file:
                pickle.load(file, encoding="latin1")
        except PICKLE_ERRORS:
            return path
    return None


def read_cifar_split(name: str, dataset_class: type[CIFAR10], root: Path, train: bool) -> CIFAR10:
    directory = root / dataset_class.base_folder
    try:
        return dataset_class(root, train=train, download=False)
    except RuntimeError as error:
        # torchvision's integrity check: the files exist (require_files saw them), so an md5 differs.
        from torchvision.datasets.utils import check_integrity

        modified = [file for file, md5 in checksums(dataset_class).items()
                    if not check_integrity(directory / file, md5)]
        if not modified:
            raise CorruptDatasetError(f"dataset {name!r}: {directory} cannot be read "
                                      f"({one_line(error)}); {REDOWNLOAD}") from None
        raise CorruptDatasetError(f"dataset {name!r}: {directory / modified[0]} differs from the "
                                  f"official release (md5 mismatch: truncated or modified); {REDOWNLOAD}"
                                  ) from None
    except PICKLE_ERRORS as error:
        batches = dataset_class.train_list if train else dataset_class.test_list
        files = [file for file, _md5 in batches] + [dataset_class.meta["filename"]]
        culprit = unpicklable([directory / file for file in files]) or directory
        reason = one_line(error) or type(error).__name__
        raise CorruptDatasetError(f"dataset {name!r}: {culprit} is not a valid CIFAR python batch "
                                  f"({reason}); {REDOWNLOAD}") from None


def to_tensors(name: str, dataset: CIFAR10) -> ImageTensors:
    """torchvision's uint8 [N, 32, 32, 3] array and label list -> uint8 [N, 3, 32, 32] + int64 [N]."""
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(dataset.targets, dtype=torch.int64)
    directory = Path(dataset.root) / dataset.base_folder
    num_classes = len(dataset.classes)
    if len(images) != len(labels):
        raise CorruptDatasetError(f"dataset {name!r}: the batches in {directory} hold "
                                  f"{len(images)} images but {len(labels)} labels; {REDOWNLOAD}")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise CorruptDatasetError(f"dataset {name!r}: the batches in {directory} hold labels "
                                  f"outside 0..{num_classes - 1} (its meta file's classes); {REDOWNLOAD}")
    return ImageTensors(images, labels)


def load_cifar(cfg: DatasetConfig, dataset_class: type[CIFAR10]) -> RawSplits:
    root = Path(cfg.root)
    require_files(cfg, root / dataset_class.base_folder, list(checksums(dataset_class)),
                  lambda: dataset_class(root, train=True, download=True),
                  f"download {dataset_class.url} and extract it into {root}")
    train = read_cifar_split(cfg.name, dataset_class, root, train=True)
    test = read_cifar_split(cfg.name, dataset_class, root, train=False)
    return RawSplits(train=to_tensors(cfg.name, train), test=to_tensors(cfg.name, test),
                     classes=list(train.classes))


@register_dataset("cifar10")
def load_cifar10(cfg: DatasetConfig) -> RawSplits:
    from torchvision.datasets import CIFAR10

    return load_cifar(cfg, CIFAR10)


@register_dataset("cifar100")
def load_cifar100(cfg: DatasetConfig) -> RawSplits:
    from torchvision.datasets import CIFAR100

    return load_cifar(cfg, CIFAR100)
