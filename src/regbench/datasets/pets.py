"""Oxford-IIIT Pet (Parkhi et al. 2012): 37 cat and dog breeds, 3,680 trainval / 3,669 test images.

torchvision's ``OxfordIIITPet`` finds (and, when allowed, downloads) ``<root>/oxford-iiit-pet`` with
``images/<Breed>_<n>.jpg`` and ``annotations/{trainval,test}.txt``; PIL decodes the images as RGB.
The official ``trainval`` split is the training split. Image checks as for imagefolder: every listed
image must exist and be non-empty up front; decoding errors later name the file.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import OxfordIIITPet
from torchvision.transforms import v2

from regbench.config import DatasetConfig, one_line
from regbench.datasets import DATASETS
from regbench.datasets.base import CorruptDatasetError, RawSplits, require_files
from regbench.datasets.imagefolder import (
    CheckedImages,
    check_image_files,
    check_image_size,
    image_transform,
)

HOW = ("download images.tar.gz and annotations.tar.gz from "
       "https://www.robots.ox.ac.uk/~vgg/data/pets/ and extract both there")


def read_pets_split(cfg: DatasetConfig, split: str, transform: v2.Compose) -> CheckedImages:
    directory = Path(cfg.root) / "oxford-iiit-pet"
    annotations = directory / "annotations" / f"{split}.txt"
    try:
        pets = OxfordIIITPet(cfg.root, split=split, target_types="category", transform=transform)
    except (ValueError, UnicodeDecodeError) as error:
        # Each line must read "<image id> <class 1..37> <species> <breed>".
        raise CorruptDatasetError(f"dataset {cfg.name!r}: {annotations} cannot be parsed "
                                  f"({one_line(error)}); {HOW}") from None
    # torchvision keeps the image paths and labels only in these private attributes.
    paths, labels = list(pets._images), list(pets._labels)
    check_image_files(cfg.name, directory, paths, HOW)
    if labels and not 0 <= min(labels) <= max(labels) < len(pets.classes):
        raise CorruptDatasetError(f"dataset {cfg.name!r}: {annotations} has class numbers outside "
                                  f"1..{len(pets.classes)} (the breeds it names); {HOW}")
    return CheckedImages(pets, paths)


@DATASETS.register("pets")
def load_pets(cfg: DatasetConfig) -> RawSplits:
    check_image_size(cfg)
    require_files(cfg, Path(cfg.root) / "oxford-iiit-pet",
                  ["images", "annotations/trainval.txt", "annotations/test.txt"],
                  lambda: OxfordIIITPet(cfg.root, download=True), HOW)
    transform = image_transform(cfg.image_size)
    train = read_pets_split(cfg, "trainval", transform)
    test = read_pets_split(cfg, "test", transform)
    # Breed names ("Abyssinian", "American Bulldog", ...) ordered by class number, from trainval.
    classes = list(train.dataset.classes)
    test_labels = test.dataset._labels
    if test_labels and max(test_labels) >= len(classes):
        raise CorruptDatasetError(f"dataset {cfg.name!r}: the test split has class "
                                  f"{max(test_labels) + 1} but trainval names only {len(classes)} "
                                  f"breeds; {HOW}")
    return RawSplits(train=train, test=test, classes=classes)
