"""Any folder of images: ``dataset.root`` holds ``train/<class>/<image>`` and ``test/<class>/*``.

torchvision's ``ImageFolder`` finds the images (extensions: ``IMG_EXTENSIONS``); ``load_rgb``
decodes them with PIL, converting every mode (grayscale, palette, RGBA, CMYK) to RGB, and 16-bit
grayscale images by scaling 0-65535 to 0-255 (PIL's own conversion clips them at 255). Class indices come from the
sorted ``train/`` subfolders; ``test/`` may hold a subset of those classes.

Images are decoded lazily, in DataLoader workers. Up front, every image file must exist and be
non-empty (cheap ``stat`` calls, no decoding) and the first test image is decoded (to learn the
input shape); an image that fails to decode later raises ``CorruptDatasetError`` naming the file.

The image helpers here are shared with the Oxford-IIIT Pet loader (pets.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes
from torchvision.transforms import v2

from regbench.config import ConfigError, DatasetConfig, check
from regbench.datasets import DATASETS
from regbench.datasets.base import CorruptDatasetError, RawSplits, missing_files_error

# What PIL raises for a truncated, garbled or non-image file (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
LAYOUT = "train/<class>/<image> and test/<class>/<image>"


class ImageFolderError(ConfigError):
    """dataset.root is not laid out as train/<class>/<image> and test/<class>/<image>."""


def check_image_size(cfg: DatasetConfig) -> None:
    check(cfg.image_size >= 1, "dataset.image_size", cfg.image_size,
          f"an integer >= 1 (the square size {cfg.name} images are resized to)")


INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # PIL's 16/32-bit integer grayscale


def load_rgb(path: str) -> Image.Image:
    """An image file as 8-bit RGB. 16-bit grayscale PNGs open as an integer mode whose conversion
    to RGB clips every value above 255 (nearly all pixels white); they are scaled down instead."""
    with Image.open(path) as image:
        if image.mode in INTEGER_MODES:
            pixels = np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8
            return Image.fromarray(pixels.astype(np.uint8), mode="L").convert("RGB")
        return image.convert("RGB")


def image_transform(size: int) -> v2.Compose:
    """PIL image (RGB: torchvision's loaders convert every mode) -> uint8 [3, size, size].

    The shorter side is resized to ``size`` and the centre cropped, the evaluation transform of
    torchvision's classification reference; random augmentation is left to regularizers, on batches.
    """
    return v2.Compose([v2.ToImage(), v2.Resize(size), v2.CenterCrop(size), v2.ToPureTensor()])


class CheckedImages(Dataset):
    """A torchvision image dataset whose decoding errors name the file (one path per sample)."""

    def __init__(self, dataset: Dataset, paths: Sequence[Path | str]) -> None:
        self.dataset = dataset
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except DECODE_ERRORS as error:
            raise CorruptDatasetError(
                f"image {self.paths[index]} cannot be decoded ({' '.join(str(error).split())}); "
                f"delete or replace it"
            ) from None


def check_image_files(name: str, directory: Path, paths: Sequence[Path | str], how: str) -> None:
    """Refuse missing or empty image files before training (a stat per file, no decoding)."""
    missing, empty = [], []
    for path in paths:
        try:
            if os.stat(path).st_size == 0:
                empty.append(path)
        except OSError:  # missing file or broken symlink
            missing.append(path)
    if missing:
        shown = [os.path.relpath(path, directory) for path in missing[:3]]
        if len(missing) > 3:
            shown.append(f"... ({len(missing)} images in all)")
        raise missing_files_error(name, directory, shown, how)
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise CorruptDatasetError(f"dataset {name!r}: image file {empty[0]} is empty{more}; "
                                  f"delete or replace it")


class FolderWithClasses(ImageFolder):
    """An ImageFolder whose class indices are given: the test split uses the training split's.

    ``find_classes`` is the hook torchvision documents for changing how classes are found.
    """

    def __init__(self, root: Path, class_to_idx: dict[str, int], **kwargs: Any) -> None:
        self.given_class_to_idx = class_to_idx
        super().__init__(root, **kwargs)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        return list(self.given_class_to_idx), self.given_class_to_idx


def read_train_folder(root: Path, transform: v2.Compose) -> ImageFolder:
    try:
        # Every training class needs images (allow_empty=False).
        return ImageFolder(root / "train", transform=transform, loader=load_rgb)
    except FileNotFoundError as error:
        raise ImageFolderError(f"dataset 'imagefolder': {error} (dataset.root={root} must hold "
                               f"{LAYOUT})") from None


def read_test_folder(root: Path, transform: v2.Compose, train: ImageFolder) -> ImageFolder:
    folder = root / "test"
    try:
        test_classes, _ = find_classes(folder)
    except FileNotFoundError as error:
        raise ImageFolderError(f"dataset 'imagefolder': {error} (dataset.root={root} must hold "
                               f"{LAYOUT})") from None
    unknown = sorted(set(test_classes) - set(train.classes))
    if unknown:
        raise ImageFolderError(
            f"dataset 'imagefolder': test/ has classes that train/ lacks ({', '.join(unknown)}) in "
            f"dataset.root={root}; every test class needs training images (train/ has "
            f"{', '.join(train.classes)})"
        )
    # A test split may lack some training classes.
    test = FolderWithClasses(folder, train.class_to_idx, transform=transform, allow_empty=True,
                             loader=load_rgb)
    if not len(test):
        raise ImageFolderError(f"dataset 'imagefolder': no images in {folder} (extensions "
                               f"{', '.join(test.extensions)})")
    return test


@DATASETS.register("imagefolder")
def load_imagefolder(cfg: DatasetConfig) -> RawSplits:
    check_image_size(cfg)
    how = f"point dataset.root at a folder holding {LAYOUT}"
    check(bool(cfg.root), "dataset.root", cfg.root, f"required for dataset=imagefolder: {how}")
    root = Path(cfg.root)
    missing = [split for split in ("train", "test") if not (root / split).is_dir()]
    if missing:
        expected = [f"{split}/<class>/<image>" for split in missing]
        raise missing_files_error(cfg.name, root, expected, how)
    transform = image_transform(cfg.image_size)
    train = read_train_folder(root, transform)
    test = read_test_folder(root, transform, train)
    splits = []
    for folder in (train, test):
        paths = [path for path, _label in folder.samples]
        check_image_files(cfg.name, Path(folder.root), paths, how)
        splits.append(CheckedImages(folder, paths))
    return RawSplits(train=splits[0], test=splits[1], classes=list(train.classes))
