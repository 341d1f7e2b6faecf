"""SVHN (datasets/svhn.py) on tiny .mat files in the real format: scipy.io.savemat of X
(32x32x3xN uint8) and y (Nx1, digit 0 stored as 10), read by torchvision's SVHN class through
regbench's loader and build_data. Nothing is downloaded."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from omegaconf import OmegaConf

from conftest import compose_config, train_in_process
from regbench.config import DatasetConfig
from regbench.datasets import DATASETS, build_data
from regbench.datasets.base import CorruptDatasetError, DatasetNotFoundError

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def svhn_config(root: Path, *overrides: str) -> DatasetConfig:
    """The dataset section of the real composed config (configs/dataset/svhn.yaml + overrides)."""
    cfg = compose_config(["dataset=svhn", f"dataset.root={root}", "dataset.download=false",
                          *overrides])
    return OmegaConf.to_object(cfg.dataset)


def load_svhn(root: Path, *overrides: str):
    return DATASETS.get("svhn")(svhn_config(root, *overrides))


def write_svhn_split(path: Path, images: np.ndarray, raw_labels: np.ndarray) -> None:
    """SVHN's format 2: X is height x width x channels x N, y is N x 1 with labels 1..10."""
    scipy.io.savemat(path, {"X": images, "y": raw_labels.reshape(-1, 1)})


def make_svhn(root: Path, num_train: int = 12, num_test: int = 6) -> dict:
    """Random images, and labels cycling through 1..10 so that digit 0 (label 10) is present."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for split, count in (("train", num_train), ("test", num_test)):
        images = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
        raw_labels = (np.arange(count) % 10 + 1).astype(np.uint8)
        write_svhn_split(root / FILES[split], images, raw_labels)
        written[split] = (images, raw_labels)
    return written


@pytest.fixture
def skip_svhn_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision compares each .mat file with the official release's md5, which synthetic files
    cannot match. Replace only that comparison, in torchvision's SVHN module: the file must still
    exist (``check_integrity`` without an md5 is torchvision's existence check); reading,
    conversion and the loader's error handling stay real."""
    from torchvision.datasets import svhn
    from torchvision.datasets.utils import check_integrity

    monkeypatch.setattr(svhn, "check_integrity", lambda fpath, md5=None: check_integrity(fpath))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_mat_files_load_as_uint8_tensors_with_digit_zero_as_label_zero(tmp_path, skip_svhn_md5):
    written = make_svhn(tmp_path)
    raw = load_svhn(tmp_path)
    assert raw.classes == [str(digit) for digit in range(10)]
    for split, loaded in (("train", raw.train), ("test", raw.test)):
        images, raw_labels = written[split]
        assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64
        assert loaded.images.shape == (images.shape[3], 3, 32, 32)
        # Image i is X[:, :, :, i]; its channel c is X[:, :, c, i] (rows, then columns).
        for index in (0, images.shape[3] - 1):
            for channel in range(3):
                assert torch.equal(loaded.images[index, channel],
                                   torch.from_numpy(images[:, :, channel, index]))
        assert loaded.labels.tolist() == [label % 10 for label in raw_labels.tolist()]
    assert 0 in raw.train.labels.tolist()  # label 10 of the file


def test_build_data_batches_svhn_with_the_preset_normalization(tmp_path, skip_svhn_md5):
    make_svhn(tmp_path, num_train=12, num_test=6)
    data = build_data(svhn_config(tmp_path, "dataset.val_size=2"), batch_size=4,
                      device=torch.device("cpu"), seed=0)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.mean == [0.4377, 0.4438, 0.4728] and data.std == [0.1980, 0.2010, 0.1970]
    images, labels = next(iter(data.test))
    assert labels.dtype == torch.int64 and len(labels) == 4
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    assert sum(len(batch) for batch, _ in data.val) == 2
    assert sum(len(batch) for batch, _ in data.train_eval) == 10


def test_missing_files_without_download_give_one_line_naming_folder_files_and_how(tmp_path):
    (tmp_path / FILES["test"]).write_bytes(b"")  # only the training file is missing
    with pytest.raises(DatasetNotFoundError) as error:
        load_svhn(tmp_path)
    message = one_line(error)
    assert message.startswith(f"dataset 'svhn': files not found under {tmp_path} "
                              f"(expected train_32x32.mat)")
    assert "rerun with dataset.download=true" in message
    assert "http://ufldl.stanford.edu/housenumbers/train_32x32.mat" in message
    assert "dataset.root" in message and "$REGBENCH_DATA" in message


def test_failed_download_gives_one_line(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DatasetNotFoundError) as error:
        load_svhn(tmp_path, "dataset.download=true")
    message = one_line(error)
    assert f"dataset 'svhn': files not found under {tmp_path}" in message
    assert "the download failed" in message and "network is unreachable (test)" in message
    assert "train_32x32.mat, test_32x32.mat" in message


def test_files_differing_from_the_release_are_refused_by_name(tmp_path):
    """Without the md5 patch, synthetic files fail torchvision's integrity check."""
    make_svhn(tmp_path)
    with pytest.raises(CorruptDatasetError) as error:
        load_svhn(tmp_path)
    message = one_line(error)
    assert str(tmp_path / FILES["train"]) in message and "md5 mismatch" in message


@pytest.mark.parametrize("content", [b"garbage" * 10, b"", None],
                         ids=["garbage", "empty", "truncated"])
def test_an_unreadable_mat_file_is_reported_by_name(tmp_path, skip_svhn_md5, content):
    make_svhn(tmp_path)
    path = tmp_path / FILES["test"]
    path.write_bytes(content if content is not None else path.read_bytes()[:300])
    with pytest.raises(CorruptDatasetError) as error:
        load_svhn(tmp_path)
    message = one_line(error)
    assert str(path) in message and "is not a valid SVHN .mat file" in message


def test_images_of_another_shape_are_refused(tmp_path, skip_svhn_md5):
    make_svhn(tmp_path)
    gray = np.zeros((28, 28, 1, 4), np.uint8)
    write_svhn_split(tmp_path / FILES["test"], gray, np.ones(4, np.uint8))
    with pytest.raises(CorruptDatasetError) as error:
        load_svhn(tmp_path)
    message = one_line(error)
    assert "holds X of shape (28, 28, 1, 4) uint8, not SVHN's 32x32x3xN uint8" in message


@pytest.mark.parametrize("labels, expected", [
    (np.array([1, 2, 11, 3], np.uint8), "labels outside 1..10"),
    (np.array([1, 2, 3], np.uint8), "holds 4 images but 3 labels"),
])
def test_labels_that_do_not_fit_the_images_are_refused(tmp_path, skip_svhn_md5, labels, expected):
    make_svhn(tmp_path)
    images = np.zeros((32, 32, 3, 4), np.uint8)
    write_svhn_split(tmp_path / FILES["test"], images, labels)
    with pytest.raises(CorruptDatasetError) as error:
        load_svhn(tmp_path)
    message = one_line(error)
    assert str(tmp_path / FILES["test"]) in message and expected in message


def test_svhn_trains_end_to_end(tmp_path, skip_svhn_md5):
    make_svhn(tmp_path / "data", num_train=16, num_test=4)
    metrics = train_in_process(tmp_path / "run", [
        "dataset=svhn", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
        "dataset.val_size=4", "trainer.epochs=1", "trainer.batch_size=4",
        "model.hidden_sizes=[16]"])
    assert metrics["status"] == "completed" and metrics["dataset"] == "svhn"
