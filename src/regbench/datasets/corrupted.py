"""The published corrupted test sets, read from their released files under ``dataset.root``:
CIFAR-10-C and CIFAR-100-C (Hendrycks & Dietterich 2019) and MNIST-C (Mu & Gilmer 2019).

- ``<root>/CIFAR-10-C/<corruption>.npy`` (and ``CIFAR-100-C``): uint8 [5 N, 32, 32, 3], HWC, the N
  test images at severity 1, then at 2, ... (row (severity - 1) N + i), with ``labels.npy`` [5 N]
  (the N labels five times). N = 10,000 in the release; any N is read.
- ``<root>/mnist_c/<corruption>/test_images.npy``: uint8 [N, 28, 28, 1], and
  ``test_labels.npy`` [N]. MNIST-C publishes each corruption at one level, not on the 1-5 scale:
  its sets are keyed by severity ``MNIST_C_SEVERITY`` = 0, so that they stay out of per-severity
  means. Its ``identity`` folder, the clean MNIST test split, is not read.

Files are memory-mapped and sliced per severity: the tensors returned are views of the files (NCHW
by a permutation), read from disk when used, so that holding every set costs no memory up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from regbench.config.errors import check
from regbench.datasets.base import CorruptDatasetError, DatasetNotFoundError

# The release's files, in make_cifar_c.py's order: its 15 benchmark corruptions, then the 4 it
# added for validation (hendrycks/robustness; the notes, section 1.1).
CIFAR_C_BENCHMARK = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                     "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                     "elastic_transform", "pixelate", "jpeg_compression")
CIFAR_C_CORRUPTIONS = CIFAR_C_BENCHMARK + ("speckle_noise", "gaussian_blur", "spatter", "saturate")
# google-research/mnist-c corruptions.py CORRUPTIONS (= TFDS mnist_corrupted), less 'identity'.
MNIST_C_CORRUPTIONS = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale",
                       "rotate", "brightness", "translate", "stripe", "fog", "spatter",
                       "dotted_line", "zigzag", "canny_edges")
CIFAR_C_SEVERITIES = (1, 2, 3, 4, 5)
MNIST_C_SEVERITY = 0

PublishedSets = dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Release:
    """Where one published set lives and what its images look like."""

    folder: str  # under dataset.root, as the archive extracts
    corruptions: tuple[str, ...]
    image_shape: tuple[int, int, int]  # H, W, C
    num_classes: int
    download: str  # the archive and its record

    def files(self) -> list[str]:
        """Every file the loader reads, relative to ``folder``."""
        if self.folder == "mnist_c":
            return [f"{name}/{file}" for name in self.corruptions
                    for file in ("test_images.npy", "test_labels.npy")]
        return [f"{name}.npy" for name in self.corruptions] + ["labels.npy"]


RELEASES = {
    "cifar10": Release("CIFAR-10-C", CIFAR_C_CORRUPTIONS, (32, 32, 3), 10,
                       "CIFAR-10-C.tar from https://zenodo.org/records/2535967"),
    "cifar100": Release("CIFAR-100-C", CIFAR_C_CORRUPTIONS, (32, 32, 3), 100,
                        "CIFAR-100-C.tar from https://zenodo.org/records/3555552"),
    "mnist": Release("mnist_c", MNIST_C_CORRUPTIONS, (28, 28, 1), 10,
                     "mnist_c.zip from https://zenodo.org/records/3239543"),
}


def published_sets(root: Path, dataset: str) -> PublishedSets:
    """(corruption, severity) -> (uint8 images [N, C, H, W], int64 labels [N]) of ``dataset``'s
    published corrupted test set under ``root``: severities 1-5 for CIFAR-10-C and CIFAR-100-C,
    ``MNIST_C_SEVERITY`` for MNIST-C. Missing or malformed files are refused in one line."""
    check(dataset in RELEASES, "dataset", dataset,
          f"one with a published corrupted test set: {', '.join(RELEASES)}")
    release = RELEASES[dataset]
    folder = Path(root).expanduser() / release.folder
    missing = [file for file in release.files() if not (folder / file).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        shown = ", ".join(missing[:3]) + more
        raise DatasetNotFoundError(
            f"published corrupted test set of {dataset!r}: {folder} lacks {len(missing)} of its "
            f"{len(release.files())} files ({shown}); download {release.download} and extract "
            f"it under {Path(root).expanduser()}, or set dataset.root to the folder holding "
            f"{release.folder}/")
    if release.folder == "mnist_c":
        return {(name, MNIST_C_SEVERITY): read_pair(folder / name / "test_images.npy",
                                                    folder / name / "test_labels.npy", release)
                for name in release.corruptions}
    return cifar_c_sets(folder, release)


def cifar_c_sets(folder: Path, release: Release) -> PublishedSets:
    """Each corruption file sliced into its five severities, rows (severity - 1) N to severity N."""
    labels = read_labels(folder / "labels.npy", release)
    sets: PublishedSets = {}
    for name in release.corruptions:
        path = folder / f"{name}.npy"
        images = read_images(path, release)
        if len(images) != len(labels) or len(images) % len(CIFAR_C_SEVERITIES):
            raise CorruptDatasetError(
                f"{path} holds {len(images)} images and {folder / 'labels.npy'} {len(labels)} "
                f"labels: expected the same 5 N, N test images at each of severities 1-5")
        per_severity = len(images) // len(CIFAR_C_SEVERITIES)
        for severity in CIFAR_C_SEVERITIES:
            rows = slice((severity - 1) * per_severity, severity * per_severity)
            sets[name, severity] = (images[rows], labels[rows])
    return sets


def read_pair(images_path: Path, labels_path: Path, release: Release) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    images, labels = read_images(images_path, release), read_labels(labels_path, release)
    if len(images) != len(labels):
        raise CorruptDatasetError(f"{images_path} holds {len(images)} images and {labels_path} "
                                  f"{len(labels)} labels: expected one label per image")
    return images, labels


def load_array(path: Path) -> np.ndarray:
    """The .npy file memory-mapped copy-on-write (writable views, so torch takes them without a
    warning; nothing is written back); a file that is not a readable .npy refused in one line."""
    try:
        return np.load(path, mmap_mode="c", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise CorruptDatasetError(f"{path} is not a readable .npy array ({reason}); download it "
                                  f"again") from None


def read_images(path: Path, release: Release) -> torch.Tensor:
    """uint8 [N, H, W, C] on disk -> a uint8 [N, C, H, W] view."""
    array = load_array(path)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != release.image_shape:
        expected = ", ".join(map(str, release.image_shape))
        raise CorruptDatasetError(f"{path} holds {array.dtype} {list(array.shape)}: expected "
                                  f"uint8 [N, {expected}] (N images, height, width, channels)")
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def read_labels(path: Path, release: Release) -> torch.Tensor:
    array = load_array(path)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise CorruptDatasetError(f"{path} holds {array.dtype} {list(array.shape)}: expected "
                                  f"integer labels [N]")
    labels = torch.from_numpy(np.asarray(array, dtype=np.int64))
    if len(labels) and (labels.min() < 0 or labels.max() >= release.num_classes):
        bad = labels.max().item() if labels.max() >= release.num_classes else labels.min().item()
        raise CorruptDatasetError(f"{path} holds label {bad}: expected 0 to "
                                  f"{release.num_classes - 1}")
    return labels
