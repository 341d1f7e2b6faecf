"""datasets/corrupted.py: the published corrupted test sets, read from tiny files written in the
real formats (CIFAR-10-C / CIFAR-100-C: one .npy per corruption, severity-major rows, and
labels.npy; MNIST-C: a folder per corruption); missing and malformed files refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from regbench.config.errors import ConfigError
from regbench.datasets.corrupted import (
    CIFAR_C_CORRUPTIONS,
    MNIST_C_CORRUPTIONS,
    MNIST_C_SEVERITY,
    published_sets,
)

PER_SEVERITY = 5


def write_cifar_c(root: Path, folder: str = "CIFAR-10-C",
                  classes: int = 10) -> dict[str, np.ndarray]:
    """Every file of the release, 5 images per severity; pixel values say which corruption,
    severity and image a row is: [0, 0, 0, 0] = corruption index, [0, 0, 0, 1] = severity,
    [0, 0, 0, 2] = image index."""
    directory = root / folder
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.tile(rng.integers(0, classes, PER_SEVERITY), 5).astype(np.uint8)
    np.save(directory / "labels.npy", labels)
    arrays = {}
    for number, name in enumerate(CIFAR_C_CORRUPTIONS):
        images = rng.integers(0, 256, (5 * PER_SEVERITY, 32, 32, 3), dtype=np.uint8)
        for row in range(5 * PER_SEVERITY):
            images[row, 0, 0] = (number, row // PER_SEVERITY + 1, row % PER_SEVERITY)
        np.save(directory / f"{name}.npy", images)
        arrays[name] = images
    arrays["labels"] = labels
    return arrays


def write_mnist_c(root: Path, count: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    arrays = {}
    for name in ("identity",) + MNIST_C_CORRUPTIONS:
        directory = root / "mnist_c" / name
        directory.mkdir(parents=True)
        images = rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.int64)
        np.save(directory / "test_images.npy", images)
        np.save(directory / "test_labels.npy", labels)
        arrays[name] = images, labels
    return arrays


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("dataset, folder, classes", [("cifar10", "CIFAR-10-C", 10),
                                                      ("cifar100", "CIFAR-100-C", 100)])
def test_cifar_c_rows_are_sliced_into_severities_1_to_5_as_nchw_uint8(tmp_path, dataset, folder,
                                                                       classes):
    written = write_cifar_c(tmp_path, folder, classes)
    sets = published_sets(tmp_path, dataset)
    assert set(sets) == {(name, s) for name in CIFAR_C_CORRUPTIONS for s in range(1, 6)}
    for (name, severity), (images, labels) in sets.items():
        assert images.dtype == torch.uint8 and images.shape == (PER_SEVERITY, 3, 32, 32)
        assert labels.dtype == torch.int64
        assert images[:, :, 0, 0].tolist() == [[CIFAR_C_CORRUPTIONS.index(name), severity, i]
                                               for i in range(PER_SEVERITY)]
        rows = slice((severity - 1) * PER_SEVERITY, severity * PER_SEVERITY)
        assert torch.equal(images, torch.from_numpy(written[name][rows]).permute(0, 3, 1, 2))
        assert labels.tolist() == written["labels"][rows].tolist()


def test_cifar_c_images_are_views_of_the_memory_mapped_files(tmp_path):
    write_cifar_c(tmp_path)
    images, _ = published_sets(tmp_path, "cifar10")["fog", 2]
    # The storage is the whole file's array, not a copy of the severity's rows...
    assert images.untyped_storage().nbytes() == 5 * PER_SEVERITY * 32 * 32 * 3
    # ...and the file is mapped into the process, not read.
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(tmp_path / "CIFAR-10-C" / "fog.npy") in maps.read_text()


def test_mnist_c_sets_are_one_severity_each_without_the_clean_identity_copy(tmp_path):
    written = write_mnist_c(tmp_path)
    sets = published_sets(tmp_path, "mnist")
    assert set(sets) == {(name, MNIST_C_SEVERITY) for name in MNIST_C_CORRUPTIONS}
    for (name, _), (images, labels) in sets.items():
        assert images.dtype == torch.uint8 and images.shape == (6, 1, 28, 28)
        assert torch.equal(images, torch.from_numpy(written[name][0]).permute(0, 3, 1, 2))
        assert labels.tolist() == written[name][1].tolist()


@pytest.mark.parametrize("dataset, words", [
    ("cifar10", ("lacks 20 of its 20 files (gaussian_noise.npy, shot_noise.npy, impulse_noise.npy "
                 "and 17 more); download CIFAR-10-C.tar from https://zenodo.org/records/2535967")),
    ("cifar100", "CIFAR-100-C.tar from https://zenodo.org/records/3555552"),
    ("mnist", ("lacks 30 of its 30 files (shot_noise/test_images.npy, shot_noise/test_labels.npy, "
               "impulse_noise/test_images.npy and 27 more); download mnist_c.zip from "
               "https://zenodo.org/records/3239543")),
])
def test_missing_files_are_refused_naming_the_folder_the_files_and_the_download(tmp_path, dataset,
                                                                                words):
    with pytest.raises(ConfigError) as error:
        published_sets(tmp_path, dataset)
    message = one_line(error)
    assert words in message
    folder = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C", "mnist": "mnist_c"}[dataset]
    assert f"{tmp_path / folder} lacks" in message and f"extract it under {tmp_path}" in message


def test_one_missing_corruption_file_is_named(tmp_path):
    write_cifar_c(tmp_path)
    (tmp_path / "CIFAR-10-C" / "spatter.npy").unlink()
    with pytest.raises(ConfigError) as error:
        published_sets(tmp_path, "cifar10")
    assert "lacks 1 of its 20 files (spatter.npy)" in one_line(error)


def test_a_dataset_without_a_published_corrupted_set_is_refused(tmp_path):
    with pytest.raises(ConfigError) as error:
        published_sets(tmp_path, "digits")
    assert one_line(error) == ("dataset='digits' is not allowed: one with a published corrupted "
                               "test set: cifar10, cifar100, mnist")


@pytest.mark.parametrize("file, content, words", [
    ("fog.npy", np.zeros((25, 3, 32, 32), np.uint8),
     "fog.npy holds uint8 [25, 3, 32, 32]: expected uint8 [N, 32, 32, 3]"),
    ("fog.npy", np.zeros((25, 32, 32, 3), np.float32),
     "fog.npy holds float32 [25, 32, 32, 3]: expected uint8"),
    ("fog.npy", np.zeros((24, 32, 32, 3), np.uint8),
     "fog.npy holds 24 images and"),
    ("labels.npy", np.zeros((25, 1), np.uint8),
     "labels.npy holds uint8 [25, 1]: expected integer labels [N]"),
    ("labels.npy", np.full(25, 10, np.uint8),
     "labels.npy holds label 10: expected 0 to 9"),
])
def test_malformed_cifar_c_files_are_refused_in_one_line(tmp_path, file, content, words):
    write_cifar_c(tmp_path)
    np.save(tmp_path / "CIFAR-10-C" / file, content)
    with pytest.raises(ConfigError) as error:
        published_sets(tmp_path, "cifar10")
    assert words in one_line(error)


def test_a_truncated_or_pickled_npy_file_is_refused_in_one_line(tmp_path):
    write_cifar_c(tmp_path)
    path = tmp_path / "CIFAR-10-C" / "zoom_blur.npy"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConfigError) as error:
        published_sets(tmp_path, "cifar10")
    assert f"{path} is not a readable .npy array" in one_line(error)
    np.save(path, np.array([{"not": "an image"}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError) as error:
        published_sets(tmp_path, "cifar10")
    assert f"{path} is not a readable .npy array" in one_line(error)


@pytest.mark.parametrize("images, labels, words", [
    (np.zeros((6, 28, 28), np.uint8), np.zeros(6, np.int64),
     "holds uint8 [6, 28, 28]: expected uint8 [N, 28, 28, 1]"),
    (np.zeros((6, 28, 28, 1), np.uint8), np.zeros(5, np.int64),
     "holds 6 images and"),
])
def test_malformed_mnist_c_files_are_refused_in_one_line(tmp_path, images, labels, words):
    write_mnist_c(tmp_path)
    np.save(tmp_path / "mnist_c" / "rotate" / "test_images.npy", images)
    np.save(tmp_path / "mnist_c" / "rotate" / "test_labels.npy", labels)
    with pytest.raises(ConfigError) as error:
        published_sets(tmp_path, "mnist")
    assert words in one_line(error) and "rotate" in one_line(error)
