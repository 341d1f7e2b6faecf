"""MNIST and Fashion-MNIST: 60,000 training and 10,000 test 28x28 grayscale images, 10 classes.

torchvision's dataset classes find (and, when allowed, download) the raw IDX files under
``<root>/MNIST/raw`` and ``<root>/FashionMNIST/raw`` and parse them; the whole split is kept in
memory as one uint8 tensor.

``require_files`` is shared by the other torchvision-backed loaders (cifar, pets).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

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
    from torchvision.datasets import MNIST

# What torchvision's IDX parser raises on a truncated or garbled file: it asserts the header and the
# size (AssertionError), checks dtype/dimensions (TypeError/ValueError), and under ``python -O`` a
# wrong size surfaces as a failed view (RuntimeError).
IDX_ERRORS = (AssertionError, ValueError, TypeError, RuntimeError, KeyError)


def unreadable_idx_file(paths: Sequence[Path]) -> Path | None:
    """The first file torchvision's IDX parser rejects (used only to name it in the error)."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    for path in paths:
        try:
            read_sn3_pascalvincent_tensor(str(path), strict=True)
        except IDX_ERRORS:
            return path
    return None


def read_idx_split(name: str, dataset_class: type[MNIST], root: Path, split_files: Sequence[Path],
                   train: bool) -> ImageTensors:
    """One split through torchvision's class: uint8 [N, 28, 28] -> [N, 1, 28, 28] in one step."""
    try:
        dataset = dataset_class(root, train=train, download=False)
    except IDX_ERRORS as error:
        culprit = unreadable_idx_file(split_files) or " / ".join(map(str, split_files))
        reason = one_line(error) or type(error).__name__  # torchvision's asserts carry no message
        raise CorruptDatasetError(f"dataset {name!r}: {culprit} is not a valid IDX file ({reason}); "
                                  f"{REDOWNLOAD}") from None
    images, labels = dataset.data, dataset.targets
    images_file, labels_file = split_files  # torchvision lists each split's images, then labels
    redo = "delete them and rerun with dataset.download=true"
    if len(images) != len(labels):
        raise CorruptDatasetError(f"dataset {name!r}: {images_file} holds {len(images)} images but "
                                  f"{labels_file} holds {len(labels)} labels; {redo}")
    num_classes = len(dataset_class.classes)
    if len(labels) and int(labels.max()) >= num_classes:  # labels are unsigned bytes
        raise CorruptDatasetError(f"dataset {name!r}: {labels_file} holds label {int(labels.max())}, "
                                  f"outside 0..{num_classes - 1}; {redo}")
    return ImageTensors(images.unsqueeze(1).contiguous(), labels.long())


def load_idx_dataset(cfg: DatasetConfig, dataset_class: type[MNIST]) -> RawSplits:
    root = Path(cfg.root)
    directory = root / dataset_class.__name__ / "raw"  # torchvision's ``raw_folder``
    archives = [archive for archive, _md5 in dataset_class.resources]
    files = [archive.removesuffix(".gz") for archive in archives]
    how = f"download their .gz files from {dataset_class.mirrors[0]} and gunzip them there"
    require_files(cfg, directory, files, lambda: dataset_class(root, train=True, download=True), how)

    def split(train: bool) -> ImageTensors:
        # torchvision names the files of each split train-* and t10k-*.
        prefix = "train" if train else "t10k"
        split_files = [directory / name for name in files if name.startswith(prefix)]
        return read_idx_split(cfg.name, dataset_class, root, split_files, train)

    return RawSplits(train=split(True), test=split(False), classes=list(dataset_class.classes))


@register_dataset("mnist")
def load_mnist(cfg: DatasetConfig) -> RawSplits:
    from torchvision.datasets import MNIST

    return load_idx_dataset(cfg, MNIST)


@register_dataset("fashion_mnist")
def load_fashion_mnist(cfg: DatasetConfig) -> RawSplits:
    from torchvision.datasets import FashionMNIST

    return load_idx_dataset(cfg, FashionMNIST)
