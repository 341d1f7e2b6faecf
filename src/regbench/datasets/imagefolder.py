"""Any folder of images: ``dataset.root`` holds ``train/<class>/<image>`` and ``test/<class>/*``.

torchvision's ``ImageFolder`` finds the images (extensions: ``IMG_EXTENSIONS``); ``load_rgb``
decodes them with PIL, converting every mode (grayscale, palette, RGBA, CMYK) to RGB, and 16-bit
grayscale images by scaling 0-65535 to 0-255 (PIL's own conversion clips them at 255). Class indices
come from the sorted ``train/`` subfolders; ``test/`` may hold a subset of those classes.

Sizes (``Sizing``): with ``dataset.image_size: null`` (the default) a folder whose images all share
one size is kept at that native size; otherwise (and for ``image_size: 224``) images are resized
(shorter side) and centre-cropped to 256, and the model sees 224x224 crops: random ones in training,
the centre in evaluation (``crops.py``). ``image_size: S`` stores ``round(S * 256 / 224)``, the
ratio of torchvision's classification reference (resize 256, crop 224).

Links: a folder link that leads back to a folder above it (``train/a/loop -> ../a``) is refused
before listing (torchvision's listing would count its images again at every depth), and each real
file is used once: paths that lead to a file already listed in the same class (symbolic or hard
links) are dropped with one log line, and one file in two classes or in both splits is refused.

Decoding (``load_image_files``, shared with pets.py): every image file must exist, be readable and
be non-empty (one ``open`` each, which also reads the cache key's ends of the file). With ``dataset.in_memory`` auto (and the decoded images within
``dataset.memory_budget_gb``) or true, all images are decoded once, in parallel, into a cache file
(``cache.py``) and training runs from memory; a corrupt image is named then, before training.
Otherwise images are decoded every epoch in DataLoader workers, and a corrupt one is named when
it is reached.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from regbench.config import ConfigError, DatasetConfig, check, one_line
from regbench.datasets.base import (
    CorruptDatasetError,
    ImageTensors,
    RawSplits,
    missing_files_error,
    register_dataset,
)
from regbench.datasets.cache import (
    ImageFile,
    cache_file,
    decode_all,
    image_file,
    listing_key,
    load_or_build,
    memory_budget_bytes,
    parallel_map,
    read_cache,
)

if TYPE_CHECKING:  # torchvision is imported where it is used: DEVELOPERS.md, "Start-up"
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

log = logging.getLogger(__name__)

# What PIL raises for a truncated, garbled or non-image file (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
LAYOUT = "train/<class>/<image> and test/<class>/<image>"
# torchvision's classification reference: resize to 256, crop 224 (the model's input size).
REFERENCE_STORED, REFERENCE_CROP = 256, 224
Listing = dict[str, tuple[list[str], list[int]]]  # split -> (image paths, labels)


class ImageFolderError(ConfigError):
    """dataset.root is not laid out as train/<class>/<image> and test/<class>/<image>."""


INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # PIL's 16/32-bit integer grayscale


def load_rgb(path: str) -> Image.Image:
    """An image file as 8-bit RGB. 16-bit grayscale PNGs open as an integer mode whose conversion
    to RGB clips every value above 255 (nearly all pixels white); they are scaled down instead."""
    with Image.open(path) as image:
        if image.mode in INTEGER_MODES:
            pixels = np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8
            return Image.fromarray(pixels.astype(np.uint8), mode="L").convert("RGB")
        return image.convert("RGB")


def corrupt_image_error(path: str, error: BaseException) -> CorruptDatasetError:
    return CorruptDatasetError(f"image {path} cannot be decoded ({' '.join(str(error).split())}); "
                               f"delete or replace it")


def image_transform(size: Optional[int]) -> v2.Compose:
    """PIL image (RGB) -> uint8 [3, H, W]: at its own size (``size`` None), or the shorter side
    resized to ``size`` and the centre cropped to ``size`` x ``size``."""
    from torchvision.transforms import v2

    resize = [] if size is None else [v2.Resize(size), v2.CenterCrop(size)]
    return v2.Compose([v2.ToImage(), *resize, v2.ToPureTensor()])


@dataclass(frozen=True)
class ImageDecoder:
    """One image file -> uint8 [3, H, W]; picklable, so worker processes can run it."""

    size: Optional[int]

    def __call__(self, path: str) -> torch.Tensor:
        try:
            return image_transform(self.size)(load_rgb(path))
        except DECODE_ERRORS as error:
            raise corrupt_image_error(path, error) from None


def header_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except DECODE_ERRORS as error:
        raise corrupt_image_error(path, error) from None


@dataclass(frozen=True)
class Sizing:
    """How images are stored (decoded) and what the model sees."""

    decode_size: Optional[int]  # resize + centre crop to this square; None: native size
    shape: tuple[int, int, int]  # stored [C, H, W]
    crop: Optional[int]  # the model's square input, cropped from the stored images; None: all of it
    note: str = ""  # the one line logged when the 224 fallback was chosen

    @classmethod
    def square(cls, image_size: int, note: str = "") -> "Sizing":
        stored = max(image_size, round(image_size * REFERENCE_STORED / REFERENCE_CROP))
        return cls(stored, (3, stored, stored), image_size, note)


def choose_sizing(cfg: DatasetConfig, paths: Sequence[str]) -> Sizing:
    """``dataset.image_size`` set: store 256/224 of it. null: the native size when every image
    shares it (read from the headers), else torchvision's 256 -> 224."""
    if cfg.image_size is not None:
        return Sizing.square(cfg.image_size)
    sizes: set[tuple[int, int]] = set()
    for _start, found in parallel_map(header_size, list(paths), f"{cfg.name}: reading image sizes"):
        sizes.update(found)
    if len(sizes) == 1:
        width, height = sizes.pop()
        return Sizing(None, (3, height, width), None)
    shown = " and ".join(f"{w}x{h}" for w, h in sorted(sizes)[:2])
    note = (f"{cfg.name}: images differ in size ({len(sizes)} sizes, e.g. {shown}): resized "
            f"(shorter side) and centre-cropped to {REFERENCE_STORED}, the model sees "
            f"{REFERENCE_CROP}x{REFERENCE_CROP} crops (random in training, the centre in "
            f"evaluation); set dataset.image_size to choose")
    return Sizing.square(REFERENCE_CROP, note)


class ImageFiles(Dataset):
    """Image files decoded on access (the DataLoader path): (uint8 [3, H, W], label)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], decode: ImageDecoder) -> None:
        self.paths, self.labels, self.decode = list(paths), list(labels), decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.decode(self.paths[index]), self.labels[index]


def read_image_files(name: str, directory: Path, paths: Sequence[str], how: str) -> list[ImageFile]:
    """Every image's size, mtime, ends and inode (cache.image_file: the cache key and the real file
    a path leads to); refuses missing, unreadable or empty files up front."""
    files, missing, empty = [], [], []
    for path in paths:
        try:
            file = image_file(str(path))
        except (FileNotFoundError, NotADirectoryError):  # missing file or broken symlink
            missing.append(path)
            continue
        except OSError as error:  # unreadable: permissions, a directory, a link loop
            raise CorruptDatasetError(f"dataset {name!r}: image file {path} cannot be read "
                                      f"({one_line(error)}); fix or delete it") from None
        if file.size == 0:
            empty.append(path)
        files.append(file)
    if missing:
        shown = [os.path.relpath(path, directory) for path in missing[:3]]
        if len(missing) > 3:
            shown.append(f"... ({len(missing)} images in all)")
        raise missing_files_error(name, directory, shown, how)
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise CorruptDatasetError(f"dataset {name!r}: image file {empty[0]} is empty{more}; "
                                  f"delete or replace it")
    return files


def one_per_real_file(name: str, listing: Listing, files: dict[str, list[ImageFile]]
                      ) -> tuple[Listing, dict[str, list[ImageFile]]]:
    """Each real file once: paths that lead to a file already listed (symbolic or hard links) in
    the same class are dropped, with one log line; in another class or split they are refused (one
    image with two labels, or a test image trained on)."""
    first: dict[tuple[int, int], tuple[str, int, str]] = {}  # inode -> (split, label, path)
    kept_listing: Listing = {}
    kept_files: dict[str, list[ImageFile]] = {}
    dropped = 0
    for split, (paths, labels) in listing.items():
        kept = []
        for path, label, file in zip(paths, labels, files[split]):
            if file.inode not in first:
                first[file.inode] = (split, label, path)
                kept.append((path, label, file))
                continue
            other_split, other_label, other_path = first[file.inode]
            if (other_split, other_label) != (split, label):
                where = "splits" if other_split != split else "classes"
                raise CorruptDatasetError(f"dataset {name!r}: {path} and {other_path} are the same "
                                          f"file (a link) in two {where}; remove one of them")
            dropped += 1
        kept_listing[split] = ([path for path, _, _ in kept], [label for _, label, _ in kept])
        kept_files[split] = [file for _, _, file in kept]
    if dropped:
        log.info("%s: %d image paths lead to files already listed (links); each file is used once",
                 name, dropped)
    return kept_listing, kept_files


def keeps_in_memory(cfg: DatasetConfig, sizing: Sizing, count: int) -> bool:
    if cfg.in_memory != "auto":
        return cfg.in_memory == "true"
    needed = count * int(np.prod(sizing.shape))
    budget = memory_budget_bytes(cfg.memory_budget_gb)
    if needed <= budget:
        return True
    log.info("%s: the %d decoded images (%.1f GB) exceed the memory budget (%.1f GB, "
             "dataset.memory_budget_gb): decoding them in DataLoader workers every epoch",
             cfg.name, count, needed / 1e9, budget / 1e9)
    return False


def load_image_files(cfg: DatasetConfig, listing: Listing, classes: list[str], directory: Path,
                     how: str) -> RawSplits:
    """The ``train`` and ``test`` splits of ``listing`` (split -> image paths, labels), each real
    file once: decoded once into the cache and kept in memory, or decoded by DataLoader workers
    (module docstring)."""
    files = {split: read_image_files(cfg.name, directory, paths, how)
             for split, (paths, _labels) in listing.items()}
    listing, files = one_per_real_file(cfg.name, listing, files)
    labels = {split: torch.tensor(split_labels, dtype=torch.int64)
              for split, (_paths, split_labels) in listing.items()}
    key = listing_key(cfg.name, cfg.image_size, files)
    path = cache_file(cfg.name, key)
    content = read_cache(path, key) if cfg.in_memory != "false" else None
    if content is not None:
        sizing = Sizing(**{**content["sizing"], "shape": tuple(content["sizing"]["shape"])})
    else:
        sizing = choose_sizing(cfg, [f.path for split in files.values() for f in split])
    if sizing.note:
        log.info(sizing.note)
    count = sum(len(split) for split in files.values())
    if not keeps_in_memory(cfg, sizing, count):
        decode = ImageDecoder(sizing.decode_size)
        splits = {split: ImageFiles(paths, split_labels, decode)
                  for split, (paths, split_labels) in listing.items()}
        return RawSplits(splits["train"], splits["test"], classes, crop_size=sizing.crop)

    def build() -> dict[str, Any]:
        decode = ImageDecoder(sizing.decode_size)
        decoded = {split: decode_all(decode, paths, sizing.shape, f"{cfg.name}: decoding {split}")
                   for split, (paths, _labels) in listing.items()}
        return {**decoded, "sizing": {**asdict(sizing), "shape": list(sizing.shape)}}

    built = False
    if content is None:
        content, built = load_or_build(cfg.name, path, key, build)
    if not built:
        log.info("%s: loaded %d decoded images from %s", cfg.name, count, path)
    splits = {split: ImageTensors(content[split], labels[split]) for split in listing}
    return RawSplits(splits["train"], splits["test"], classes, crop_size=sizing.crop)


def refuse_link_loops(root: Path, folder: Path) -> None:
    """torchvision lists a folder with ``os.walk(followlinks=True)``, which follows a link to a
    folder above it (``train/a/loop -> ../a``) again at every depth until the path is too long:
    the same images counted dozens of times, or without end for two such links. Refused here,
    before it lists anything."""
    above = {str(folder): (os.path.realpath(folder),)}  # walked path -> real folders down to it
    for walked, subfolders, _files in os.walk(folder, followlinks=True):
        chain = above.pop(walked)
        for name in subfolders:
            path = os.path.join(walked, name)
            real = os.path.realpath(path)
            if real in chain:
                raise ImageFolderError(f"dataset 'imagefolder': {path} is a link to {real}, a folder "
                                       f"it is in, so its images would be listed again at every "
                                       f"depth; remove the link (dataset.root={root})")
            above[path] = (*chain, real)


def read_train_folder(root: Path) -> ImageFolder:
    from torchvision.datasets import ImageFolder

    try:
        # Every training class needs images (allow_empty=False).
        return ImageFolder(root / "train", loader=load_rgb)
    except FileNotFoundError as error:
        raise ImageFolderError(f"dataset 'imagefolder': {error} (dataset.root={root} must hold "
                               f"{LAYOUT})") from None


def read_test_folder(root: Path, train: ImageFolder) -> list[tuple[str, int]]:
    """(path, class index) of every test image, with the training split's class indices."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

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
    # A test split may lack some training classes (allow_empty).
    samples = make_dataset(folder, train.class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise ImageFolderError(f"dataset 'imagefolder': no images in {folder} (extensions "
                               f"{', '.join(IMG_EXTENSIONS)})")
    return samples


@register_dataset("imagefolder")
def load_imagefolder(cfg: DatasetConfig) -> RawSplits:
    how = f"point dataset.root at a folder holding {LAYOUT}"
    check(bool(cfg.root), "dataset.root", cfg.root, f"required for dataset=imagefolder: {how}")
    root = Path(cfg.root)
    missing = [split for split in ("train", "test") if not (root / split).is_dir()]
    if missing:
        expected = [f"{split}/<class>/<image>" for split in missing]
        raise missing_files_error(cfg.name, root, expected, how)
    for split in ("train", "test"):
        refuse_link_loops(root, root / split)
    train = read_train_folder(root)
    test = read_test_folder(root, train)
    listing = {split: ([path for path, _ in samples], [label for _, label in samples])
               for split, samples in (("train", train.samples), ("test", test))}
    return load_image_files(cfg, listing, list(train.classes), root, how)
