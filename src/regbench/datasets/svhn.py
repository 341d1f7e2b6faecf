"""SVHN (Netzer et al. 2011): 73,257 training and 26,032 test 32x32 RGB crops of house-number
digits, 10 classes; the usual out-of-distribution set of CIFAR models (Hendrycks & Gimpel 2017,
Outlier Exposure, Ovadia et al. 2019).

torchvision's SVHN class finds (and, when allowed, downloads) ``train_32x32.mat`` and
``test_32x32.mat`` directly under ``<root>`` (torchvision's own layout, so one copy under
$REGBENCH_DATA serves every torchvision project), checks their md5 against the official release and
reads them with scipy.io.loadmat: X is 32x32x3xN uint8, y is Nx1 with digit 0 stored as label 10,
which torchvision maps to 0. The whole split is kept in memory as one uint8 tensor. The 531,131
"extra" training images are not used.
"""

from __future__ import annotations

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
    from torchvision.datasets import SVHN

SPLITS = ("train", "test")
CLASSES = [str(digit) for digit in range(10)]
# What scipy.io.loadmat and torchvision's reshaping raise on a truncated or garbled .mat file,
# besides scipy's MatReadError (added where scipy is imported): a bad header or a short read
# (ValueError, OSError, EOFError), a missing X or y (KeyError), X not 4-D (ValueError).
MAT_ERRORS = (ValueError, OSError, EOFError, KeyError, TypeError, IndexError)


def file_of(dataset_class: type[SVHN], split: str) -> str:
    return dataset_class.split_list[split][1]


def download_splits(dataset_class: type[SVHN], root: Path) -> None:
    """torchvision's downloader, file by file: constructing SVHN(download=True) would also load
    each file (train_32x32.mat: 182 MB) before the loader reads it again."""
    from torchvision.datasets.utils import download_url

    for split in SPLITS:
        url, filename, md5 = dataset_class.split_list[split]
        download_url(url, str(root), filename, md5)


def read_svhn_split(name: str, dataset_class: type[SVHN], root: Path, split: str) -> SVHN:
    from scipy.io.matlab import MatReadError

    path = root / file_of(dataset_class, split)
    try:
        return dataset_class(str(root), split=split, download=False)
    except RuntimeError:
        # torchvision's integrity check: require_files saw the file, so its md5 differs.
        raise CorruptDatasetError(f"dataset {name!r}: {path} differs from the official release "
                                  f"(md5 mismatch: truncated or modified); {REDOWNLOAD}") from None
    except (MatReadError, *MAT_ERRORS) as error:
        raise CorruptDatasetError(f"dataset {name!r}: {path} is not a valid SVHN .mat file "
                                  f"({one_line(error)}); {REDOWNLOAD}") from None


def to_tensors(name: str, dataset: SVHN, path: Path) -> ImageTensors:
    """torchvision's [N, 3, 32, 32] view of X and its labels -> uint8 images + int64 labels."""
    if dataset.data.dtype.name != "uint8" or dataset.data.shape[1:] != (3, 32, 32):
        count, channels, height, width = dataset.data.shape  # X was height x width x channels x N
        raise CorruptDatasetError(f"dataset {name!r}: {path} holds X of shape "
                                  f"{(height, width, channels, count)} {dataset.data.dtype}, not "
                                  f"SVHN's 32x32x3xN uint8; {REDOWNLOAD}")
    images = torch.from_numpy(dataset.data).contiguous()
    labels = torch.as_tensor(dataset.labels, dtype=torch.int64).reshape(-1)
    if len(images) != len(labels):
        raise CorruptDatasetError(f"dataset {name!r}: {path} holds {len(images)} images but "
                                  f"{len(labels)} labels; {REDOWNLOAD}")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(CLASSES):
        raise CorruptDatasetError(f"dataset {name!r}: {path} holds labels outside 1..10 (10 is "
                                  f"digit 0); {REDOWNLOAD}")
    return ImageTensors(images, labels)


@register_dataset("svhn")
def load_svhn(cfg: DatasetConfig) -> RawSplits:
    from torchvision.datasets import SVHN

    root = Path(cfg.root)
    files = [file_of(SVHN, split) for split in SPLITS]
    urls = " and ".join(SVHN.split_list[split][0] for split in SPLITS)
    require_files(cfg, root, files, lambda: download_splits(SVHN, root),
                  f"download {urls} into {root}")
    splits = {split: to_tensors(cfg.name, read_svhn_split(cfg.name, SVHN, root, split),
                                root / file_of(SVHN, split))
              for split in SPLITS}
    return RawSplits(train=splits["train"], test=splits["test"], classes=list(CLASSES))
