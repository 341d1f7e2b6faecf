"""Oxford-IIIT Pet (Parkhi et al. 2012): 37 cat and dog breeds, 3,680 trainval / 3,669 test images.

torchvision's ``OxfordIIITPet`` finds (and, when allowed, downloads) ``<root>/oxford-iiit-pet`` with
``images/<Breed>_<n>.jpg`` and ``annotations/{trainval,test}.txt``; PIL decodes the images as RGB.
The official ``trainval`` split is the training split. Sizes, the decode-once cache and the image
checks are imagefolder's (``load_image_files``): with ``image_size: 224`` images are stored at 256
(shorter side resized, centre cropped) and the model sees random 224 crops in training and the
centre crop in evaluation; the decoded splits (about 1.4 GB) are kept in memory when they fit
``dataset.memory_budget_gb``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from regbench.config import DatasetConfig, one_line
from regbench.datasets.base import (
    CorruptDatasetError,
    RawSplits,
    register_dataset,
    require_files,
)
from regbench.datasets.imagefolder import load_image_files

if TYPE_CHECKING:  # torchvision is imported where it is used: DEVELOPERS.md, "Start-up"
    from torchvision.datasets import OxfordIIITPet

HOW = ("download images.tar.gz and annotations.tar.gz from "
       "https://www.robots.ox.ac.uk/~vgg/data/pets/ and extract both there")


def read_pets_split(cfg: DatasetConfig, split: str) -> OxfordIIITPet:
    from torchvision.datasets import OxfordIIITPet

    annotations = Path(cfg.root) / "oxford-iiit-pet" / "annotations" / f"{split}.txt"
    try:
        pets = OxfordIIITPet(cfg.root, split=split, target_types="category")
    except (ValueError, UnicodeDecodeError) as error:
        # Each line must read "<image id> <class 1..37> <species> <breed>".
        raise CorruptDatasetError(f"dataset {cfg.name!r}: {annotations} cannot be parsed "
                                  f"({one_line(error)}); {HOW}") from None
    # torchvision keeps the image paths and labels only in the private _images and _labels.
    labels = pets._labels
    if labels and not 0 <= min(labels) <= max(labels) < len(pets.classes):
        raise CorruptDatasetError(f"dataset {cfg.name!r}: {annotations} has class numbers outside "
                                  f"1..{len(pets.classes)} (the breeds it names); {HOW}")
    return pets


@register_dataset("pets")
def load_pets(cfg: DatasetConfig) -> RawSplits:
    from torchvision.datasets import OxfordIIITPet

    directory = Path(cfg.root) / "oxford-iiit-pet"
    require_files(cfg, directory, ["images", "annotations/trainval.txt", "annotations/test.txt"],
                  lambda: OxfordIIITPet(cfg.root, download=True), HOW)
    train = read_pets_split(cfg, "trainval")
    test = read_pets_split(cfg, "test")
    # Breed names ("Abyssinian", "American Bulldog", ...) ordered by class number, from trainval.
    classes = list(train.classes)
    if test._labels and max(test._labels) >= len(classes):
        raise CorruptDatasetError(f"dataset {cfg.name!r}: the test split has class "
                                  f"{max(test._labels) + 1} but trainval names only {len(classes)} "
                                  f"breeds; {HOW}")
    listing = {"train": ([str(path) for path in train._images], list(train._labels)),
               "test": ([str(path) for path in test._images], list(test._labels))}
    return load_image_files(cfg, listing, classes, directory, HOW)
