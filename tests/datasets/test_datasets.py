"""Dataset loaders on tiny files written in each dataset's real on-disk format.

Every test goes through the real code: torchvision's dataset classes read the files, the regbench
loader converts them, ``build_data`` splits and batches them. Nothing is downloaded: downloads are
either off (``dataset.download=false``) or see a network that refuses every connection.
"""

from __future__ import annotations

import logging
import os
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config, read_metrics, run_cli, train_in_process
from regbench.config import ConfigError, DatasetConfig
from regbench.datasets import DATASETS, build_data
from regbench.datasets.base import CorruptDatasetError, DatasetNotFoundError, ImageTensors

CPU = torch.device("cpu")
# Small and fast settings for the end-to-end runs (mlp is the one model available to every test).
TINY_RUN = ["trainer.epochs=1", "trainer.batch_size=4", "model.hidden_sizes=[16]",
            "dataset.num_workers=0"]


def dataset_config(name: str, root: Path, *overrides: str) -> DatasetConfig:
    """The dataset section of the real composed config (its YAML preset plus overrides)."""
    cfg = compose_config([f"dataset={name}", f"dataset.root={root}", "dataset.download=false",
                          "dataset.num_workers=0", *overrides])
    return OmegaConf.to_object(cfg.dataset)


def load(name: str, root: Path, *overrides: str):
    return DATASETS.get(name)(dataset_config(name, root, *overrides))


@pytest.fixture(autouse=True)
def image_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Decoded image caches (pets, imagefolder) go to a folder of this test, not ~/.cache."""
    folder = tmp_path_factory.mktemp("image-cache")
    monkeypatch.setenv("REGBENCH_CACHE", str(folder))
    return folder


def samples(split) -> list[tuple[torch.Tensor, int]]:
    """(image, label) pairs of an in-memory or a file-based split."""
    if isinstance(split, ImageTensors):
        return [(image, int(label)) for image, label in zip(split.images, split.labels)]
    return [split[index] for index in range(len(split))]


def one_line_error(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every URL fails the way urllib fails without a network."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# --- MNIST family: IDX files -------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format (the MNIST raw files): 0x00 0x00, type 0x08 (ubyte), ndim; big-endian int32 dims;
    then the data. Hand-written because torchvision only reads this format."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_idx_dataset(root: Path, folder: str, num_train: int = 30, num_test: int = 12) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) * 7) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("name, folder, first_class", [
    ("mnist", "MNIST", "0 - zero"), ("fashion_mnist", "FashionMNIST", "T-shirt/top")])
def test_idx_files_load_as_uint8_tensors(tmp_path, name, folder, first_class):
    arrays = make_idx_dataset(tmp_path, folder)
    raw = load(name, tmp_path)
    for split, prefix in ((raw.train, "train"), (raw.test, "t10k")):
        images, labels = arrays[prefix]
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape == (len(labels), 1, 28, 28)
        assert torch.equal(split.images[:, 0], torch.from_numpy(images))
        assert split.labels.tolist() == labels.tolist()
    assert len(raw.classes) == 10 and raw.classes[0] == first_class


def test_build_data_holds_out_val_and_keeps_train_size(tmp_path):
    arrays = make_idx_dataset(tmp_path, "MNIST", num_train=30, num_test=12)
    cfg = dataset_config("mnist", tmp_path, "dataset.val_size=6", "dataset.train_size=20")
    data = build_data(cfg, batch_size=8, device=CPU, seed=0)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.train.labels) == 20 and len(data.val.labels) == 6 and len(data.test.labels) == 12
    # Train and validation images are distinct images of the training file.
    original = {image.tobytes() for image in arrays["train"][0]}
    kept = torch.cat([data.train.images, data.val.images])[:, 0]
    held_out = [image.numpy().tobytes() for image in kept]
    assert len(set(held_out)) == 26 and set(held_out) <= original
    images, labels = next(iter(data.train))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.uint8 and labels.shape == (8,)


def split_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if " validation (" in record.getMessage()]


@pytest.mark.parametrize("num_train, overrides, sizes, rule", [
    # The default: a tenth of an 8,000-image training file, not the 5,000 of the official 60,000.
    (8000, [], (7200, 800), "dataset.val_size=null: 10 % of 8000, at most 5000"),
    (60, [], (54, 6), "dataset.val_size=null: 10 % of 60, at most 5000"),
    (60, ["dataset.val_size=10"], (50, 10), "dataset.val_size=10"),  # an integer: as it says
    (60, ["dataset.val_size=10", "dataset.train_size=20"], (20, 10),
     "dataset.val_size=10, dataset.train_size=20"),
])
def test_mnist_holds_out_a_tenth_by_default_and_every_run_logs_its_split_sizes(
        tmp_path, caplog, num_train, overrides, sizes, rule):
    make_idx_dataset(tmp_path, "MNIST", num_train=num_train, num_test=12)
    caplog.set_level(logging.INFO, logger="regbench")
    data = build_data(dataset_config("mnist", tmp_path, *overrides), batch_size=8, device=CPU, seed=0)
    assert (len(data.train.labels), len(data.val.labels)) == sizes and data.val_size == sizes[1]
    assert split_lines(caplog) == [f"mnist: {sizes[0]} training, {sizes[1]} validation ({rule}), "
                                   f"12 test examples"]


def test_the_default_rule_on_the_official_splits_keeps_their_published_sizes():
    from regbench.datasets.base import default_val_size

    # MNIST and Fashion-MNIST 60,000 -> 5,000 (55k/5k); CIFAR 50,000 -> 5,000 (45k/5k), Pets 3,680
    # -> 368; digits keeps its preset 180 of 1,437.
    assert [default_val_size(n) for n in (60000, 50000, 3680, 30, 9, 1)] == [5000, 5000, 368, 3, 1, 1]
    presets = {name: compose_config([f"dataset={name}"]).dataset.val_size
               for name in ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "pets",
                            "imagefolder")}
    assert presets == {"digits": 180, "mnist": None, "fashion_mnist": None, "cifar10": 5000,
                       "cifar100": 5000, "pets": 368, "imagefolder": None}


def test_the_default_rule_on_a_single_training_example_is_refused_in_one_line(tmp_path):
    make_idx_dataset(tmp_path, "MNIST", num_train=1, num_test=12)
    with pytest.raises(ConfigError) as error:
        build_data(dataset_config("mnist", tmp_path), batch_size=8, device=CPU, seed=0)
    assert one_line_error(error) == ("dataset.val_size=null holds out 1 of the 1 training examples "
                                     "of mnist, leaving none to train on; set dataset.val_size=0")


def test_truncated_idx_file_is_reported_by_name(tmp_path):
    make_idx_dataset(tmp_path, "MNIST")
    images_file = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images_file.write_bytes(images_file.read_bytes()[:-100])
    with pytest.raises(CorruptDatasetError) as error:
        load("mnist", tmp_path)
    message = one_line_error(error)
    assert str(images_file) in message and "not a valid IDX file" in message


def test_idx_label_count_must_match_images(tmp_path):
    make_idx_dataset(tmp_path, "FashionMNIST")
    write_idx(tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(CorruptDatasetError, match="t10k-images-idx3-ubyte holds 12 images but "
                       ".*t10k-labels-idx1-ubyte holds 5 labels"):
        load("fashion_mnist", tmp_path)


# --- CIFAR: python pickle batches ---------------------------------------------------------------

@pytest.fixture
def skip_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision compares every CIFAR file with the official release's md5, which synthetic files
    cannot match. Replace only that comparison, in torchvision's CIFAR module: the files must still
    exist (``check_integrity`` without an md5 is torchvision's own existence check), and parsing,
    conversion and the loader's error handling stay real."""
    from torchvision.datasets import cifar
    from torchvision.datasets.utils import check_integrity

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: check_integrity(fpath))


def write_pickle(path: Path, content: dict) -> None:
    # The official batches are Python 2 pickles that torchvision loads with encoding="latin1".
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=2)


def cifar_batch(rng: np.random.Generator, count: int, num_classes: int, label_key: str) -> dict:
    # Rows hold the red, then green, then blue 32x32 plane (the official layout).
    labels = [int(label) for label in rng.integers(0, num_classes, count)]
    batch = {"batch_label": "synthetic", "filenames": [f"img_{i}.png" for i in range(count)],
             "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), label_key: labels}
    if label_key == "fine_labels":
        batch["coarse_labels"] = [label // 5 for label in labels]
    return batch


def make_cifar(root: Path, name: str, per_batch: int = 6) -> dict:
    rng = np.random.default_rng(1)
    if name == "cifar10":
        folder, label_key, num_classes = root / "cifar-10-batches-py", "labels", 10
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]
        meta = ("batches.meta", {"label_names": classes, "num_cases_per_batch": per_batch,
                                 "num_vis": 3072})
    else:
        folder, label_key, num_classes = root / "cifar-100-python", "fine_labels", 100
        files = {"train": ["train"], "test": ["test"]}
        classes = [f"fine_{i}" for i in range(100)]
        meta = ("meta", {"fine_label_names": classes,
                         "coarse_label_names": [f"coarse_{i}" for i in range(20)]})
    folder.mkdir(parents=True)
    write_pickle(folder / meta[0], meta[1])
    written = {"classes": classes, "folder": folder}
    for split, names in files.items():
        batches = [cifar_batch(rng, per_batch, num_classes, label_key) for _ in names]
        for file, batch in zip(names, batches):
            write_pickle(folder / file, batch)
        written[split] = (np.concatenate([b["data"] for b in batches]),
                          sum((b[label_key] for b in batches), []))
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_batches_load_as_uint8_tensors(tmp_path, skip_cifar_md5, name):
    written = make_cifar(tmp_path, name)
    raw = load(name, tmp_path, "dataset.val_size=4")
    assert raw.classes == written["classes"]
    for split, key in ((raw.train, "train"), (raw.test, "test")):
        rows, labels = written[key]
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape == (len(labels), 3, 32, 32)
        assert torch.equal(split.images, torch.from_numpy(rows).reshape(-1, 3, 32, 32))
        assert split.labels.tolist() == labels
    assert len(raw.train) == (30 if name == "cifar10" else 6) and len(raw.test) == 6


def test_cifar_files_differing_from_the_release_are_refused(tmp_path):
    """Without the test's md5 patch, synthetic files fail torchvision's integrity check."""
    written = make_cifar(tmp_path, "cifar10")
    with pytest.raises(CorruptDatasetError) as error:
        load("cifar10", tmp_path)
    message = one_line_error(error)
    assert str(written["folder"] / "data_batch_1") in message and "md5 mismatch" in message


def test_unpicklable_cifar_batch_is_reported_by_name(tmp_path, skip_cifar_md5):
    written = make_cifar(tmp_path, "cifar10")
    batch = written["folder"] / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])  # truncated, like an interrupted copy
    with pytest.raises(CorruptDatasetError) as error:
        load("cifar10", tmp_path)
    message = one_line_error(error)
    assert str(batch) in message and "not a valid CIFAR python batch" in message


# --- Missing files and failed downloads -----------------------------------------------------------

@pytest.mark.parametrize("name, directory, expected_file", [
    ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
    ("fashion_mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
    ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ("cifar100", "cifar-100-python", "meta"),
    ("pets", "oxford-iiit-pet", "annotations/trainval.txt"),
])
def test_missing_files_without_download_give_one_line(tmp_path, name, directory, expected_file):
    with pytest.raises(DatasetNotFoundError) as error:
        load(name, tmp_path)
    message = one_line_error(error)
    assert message.startswith(f"dataset {name!r}: files not found under {tmp_path / directory} ")
    assert expected_file in message and "rerun with dataset.download=true" in message


@pytest.mark.parametrize("name, source", [
    ("mnist", "ossci-datasets.s3.amazonaws.com/mnist"),
    ("cifar10", "cifar-10-python.tar.gz"),
    ("pets", "robots.ox.ac.uk/~vgg/data/pets"),
])
def test_failed_download_gives_one_line(tmp_path, offline, name, source):
    with pytest.raises(DatasetNotFoundError) as error:
        load(name, tmp_path, "dataset.download=true")
    message = one_line_error(error)
    assert f"dataset {name!r}: files not found under {tmp_path}" in message
    assert "the download failed" in message and "network is unreachable (test)" in message
    assert source in message


@pytest.mark.parametrize("download", [True, False])
def test_the_offline_mnist_message_is_short_and_points_at_dataset_root(tmp_path, offline, download):
    with pytest.raises(DatasetNotFoundError) as error:
        load("mnist", tmp_path, f"dataset.download={download}")
    message = one_line_error(error)
    # torchvision tries two mirrors and says why each failed: the reason is said once.
    assert message.count("network is unreachable (test)") == (1 if download else 0)
    assert ("set dataset.root (or $REGBENCH_DATA) to a folder holding MNIST/raw/, or download "
            "their .gz files from https://ossci-datasets.s3.amazonaws.com/mnist/ and gunzip them "
            "there") in message
    assert len(message) - len(str(tmp_path)) < 400  # the folder's own length aside


def test_files_expected_in_the_root_itself_are_said_plainly(tmp_path):
    from regbench.datasets.base import require_files

    cfg = DatasetConfig(name="toy", root=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError) as error:
        require_files(cfg, tmp_path, ["toy.mat"], fetch=lambda: None, how="download toy.mat there")
    assert one_line_error(error) == (
        f"dataset 'toy': files not found under {tmp_path} (expected toy.mat); rerun with "
        f"dataset.download=true, set dataset.root (or $REGBENCH_DATA) to a folder holding them, or "
        f"download toy.mat there")


# --- Oxford-IIIT Pet: images/*.jpg + annotations/{trainval,test}.txt ------------------------------

# (image id prefix, class id, species 1=cat 2=dog, breed id within species): the first three
# breeds of the real list (cat breeds are capitalized in the file names, dog breeds are not).
PET_BREEDS = [("Abyssinian", 1, 1, 1), ("american_bulldog", 2, 2, 1),
              ("american_pit_bull_terrier", 3, 2, 2)]
PET_COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def make_pets(root: Path, trainval_per_breed: int = 4, test_per_breed: int = 2) -> Path:
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    number = 0
    for split, count in (("trainval", trainval_per_breed), ("test", test_per_breed)):
        lines = []
        for (breed, class_id, species, breed_id), color in zip(PET_BREEDS, PET_COLORS):
            for _ in range(count):
                number += 1
                size = (20 + 7 * (number % 4), 16 + 5 * (number % 3))  # varied sizes
                Image.new("RGB", size, color).save(base / "images" / f"{breed}_{number}.jpg")
                lines.append(f"{breed}_{number} {class_id} {species} {breed_id}")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_pets_images_are_resized_uint8_with_breed_labels(tmp_path, in_memory):
    make_pets(tmp_path)
    raw = load("pets", tmp_path, "dataset.image_size=12", f"dataset.in_memory={in_memory}")
    assert isinstance(raw.test, ImageTensors) == (in_memory == "true")
    assert raw.classes == ["Abyssinian", "American Bulldog", "American Pit Bull Terrier"]
    assert len(raw.train) == 12 and len(raw.test) == 6
    # Stored at round(12 * 256 / 224) = 14 (torchvision's 256 -> 224); the model sees 12x12 crops.
    assert raw.crop_size == 12
    for index, (image, label) in enumerate(samples(raw.test)):
        assert image.dtype == torch.uint8 and image.shape == (3, 14, 14)
        assert label == index // 2
        # Solid colours survive decoding and resizing (JPEG changes them by a few levels).
        expected = torch.tensor(PET_COLORS[label], dtype=torch.float32)
        assert (image.float().mean(dim=(1, 2)) - expected).abs().max() < 8
    cfg = dataset_config("pets", tmp_path, "dataset.image_size=12", "dataset.val_size=3",
                         "dataset.train_size=5", f"dataset.in_memory={in_memory}")
    data = build_data(cfg, batch_size=4, device=CPU, seed=0)
    assert data.input_shape == (3, 12, 12) and data.num_classes == 3
    if in_memory == "false":
        assert [len(data.train.dataset), len(data.val.dataset), len(data.test.dataset)] == [5, 3, 6]
    else:
        assert [len(data.train.labels), len(data.val.labels), len(data.test.labels)] == [5, 3, 6]
    images, labels = next(iter(data.train))
    assert images.shape == (4, 3, 12, 12) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64


def test_pets_listed_image_missing_is_refused_up_front(tmp_path):
    base = make_pets(tmp_path)
    (base / "images" / "Abyssinian_13.jpg").unlink()  # the first test image
    with pytest.raises(DatasetNotFoundError) as error:
        load("pets", tmp_path, "dataset.image_size=12")
    message = one_line_error(error)
    assert f"under {base}" in message and "images/Abyssinian_13.jpg" in message


def test_pets_empty_and_truncated_images_are_reported_by_name(tmp_path):
    base = make_pets(tmp_path)
    empty = base / "images" / "american_bulldog_5.jpg"
    empty.write_bytes(b"")
    with pytest.raises(CorruptDatasetError, match=f"image file {empty} is empty"):
        load("pets", tmp_path, "dataset.image_size=12")

    # A truncated JPEG is only found when decoded: the error names it, at load time when the
    # images are decoded into memory (before training), else when a DataLoader reaches it.
    Image.new("RGB", (64, 64), (1, 2, 3)).save(empty)
    truncated = base / "images" / "Abyssinian_1.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:400])
    with pytest.raises(CorruptDatasetError) as error:
        load("pets", tmp_path, "dataset.image_size=12")
    assert one_line_error(error).startswith(f"image {truncated} cannot be decoded")
    raw = load("pets", tmp_path, "dataset.image_size=12", "dataset.in_memory=false")
    with pytest.raises(CorruptDatasetError) as error:
        raw.train[0]
    message = one_line_error(error)
    assert message.startswith(f"image {truncated} cannot be decoded")


# --- imagefolder: train/<class>/* and test/<class>/* ----------------------------------------------

def make_image_folder(root: Path) -> dict[str, tuple[int, int, int]]:
    """Three classes in train/, two in test/; every image mode and several sizes and formats."""
    images = {
        "cat": [Image.new("RGB", (40, 30), (255, 0, 0)), "jpg"],
        "dog": [Image.new("L", (17, 50), 128), "png"],  # grayscale
        "fox": [Image.new("RGBA", (33, 33), (0, 0, 255, 90)), "png"],  # alpha is dropped
    }
    palette = Image.new("P", (25, 19), 0)
    palette.putpalette([0, 160, 0] * 256)  # palette image: every index is green
    expected = {"cat": (255, 0, 0), "dog": (128, 128, 128), "fox": (0, 0, 255)}
    for split, classes in (("train", ["cat", "dog", "fox"]), ("test", ["dog", "fox"])):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            image, extension = images[name]
            for number in range(3):
                image.resize((image.width + 5 * number, image.height)).save(
                    folder / f"{name}{number}.{extension}")
    palette.save(root / "train" / "fox" / "palette.bmp")
    (root / "train" / "fox" / "notes.txt").write_text("not an image: ignored (extension)")
    return expected


def test_image_folder_maps_test_classes_onto_train_indices(tmp_path):
    expected = make_image_folder(tmp_path)
    raw = load("imagefolder", tmp_path, "dataset.image_size=10", "dataset.in_memory=false")
    assert raw.classes == ["cat", "dog", "fox"]
    assert len(raw.train) == 10 and len(raw.test) == 6
    # test/ holds only dog and fox: they keep train's indices 1 and 2, not test's own 0 and 1.
    assert [raw.test[i][1] for i in range(6)] == [1, 1, 1, 2, 2, 2]
    for split in (raw.train, raw.test):
        for index in range(len(split)):
            image, label = split[index]
            assert image.dtype == torch.uint8 and image.shape == (3, 11, 11)  # 10 * 256 / 224
            path = Path(split.paths[index])
            colour = (0, 160, 0) if path.suffix == ".bmp" else expected[raw.classes[label]]
            assert (image.float().mean(dim=(1, 2)) - torch.tensor(colour)).abs().max() < 3
    # Decoded once into memory, the same pixels and labels in the same order.
    cached = load("imagefolder", tmp_path, "dataset.image_size=10", "dataset.in_memory=true")
    for split, in_memory in ((raw.train, cached.train), (raw.test, cached.test)):
        images, labels = zip(*samples(split))
        assert torch.equal(torch.stack(images), in_memory.images)
        assert list(labels) == in_memory.labels.tolist()


def test_16_bit_grayscale_pngs_are_scaled_not_clipped(tmp_path):
    # A ramp over the whole 16-bit range: PIL's own RGB conversion makes 99.6 % of it 255.
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(ramp).save(tmp_path / split / name / "ramp.png")
    assert Image.open(tmp_path / "test" / "a" / "ramp.png").mode == "I;16"
    raw = load("imagefolder", tmp_path, "dataset.val_size=0")  # native size: 64x64
    image = samples(raw.test)[0][0]
    assert image.shape == (3, 64, 64)
    assert torch.equal(image[0], torch.from_numpy((ramp >> 8).astype(np.uint8)))
    assert (image == 255).float().mean() < 0.01


def test_an_image_folder_with_one_class_is_refused_in_one_line(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "only").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "only" / "x.png")
    cfg = dataset_config("imagefolder", tmp_path, "dataset.image_size=8", "dataset.val_size=0",
                         "dataset.num_workers=0")
    with pytest.raises(ConfigError, match="a dataset with 2 classes or more; found 1 \\(only\\)"):
        build_data(cfg, batch_size=4, device=torch.device("cpu"), seed=0)


def test_image_folder_resize_keeps_aspect_and_crops_the_centre(tmp_path):
    # A 64x16 image: green outer quarters, grey middle half. Resizing the shorter side to 8 and
    # cropping the centre 8x8 keeps only grey; squashing to 8x8 would keep green columns.
    wide = np.full((16, 64, 3), 128, np.uint8)
    wide[:, :16] = wide[:, 48:] = (0, 255, 0)
    for split in ("train", "test"):
        (tmp_path / split / "only").mkdir(parents=True)
        Image.fromarray(wide).save(tmp_path / split / "only" / "wide.png")
    raw = load("imagefolder", tmp_path, "dataset.image_size=8", "dataset.val_size=0")
    image, _ = samples(raw.test)[0]
    assert image.shape == (3, 9, 9)  # stored at 8 * 256 / 224; 64x16 -> 36x9 -> centre 9x9
    assert (image.int() - 128).abs().max() <= 1


@pytest.mark.parametrize("layout, error_type, words", [
    ({}, DatasetNotFoundError, "expected train/<class>/<image>, test/<class>/<image>"),
    ({"train/cat/a.png": True}, DatasetNotFoundError, "expected test/<class>/<image>"),
    ({"train/cat/a.png": True, "test/cat/notes.txt": False}, ConfigError, "no images in"),
    ({"train/cat/notes.txt": False, "test/cat/a.png": True}, ConfigError,
     "Found no valid file for the classes cat"),
    ({"train/cat/a.png": True, "test/cat/b.png": True, "test/wolf/c.png": True}, ConfigError,
     "test/ has classes that train/ lacks (wolf)"),
])
def test_image_folder_layout_mistakes_are_refused(tmp_path, layout, error_type, words):
    for relative, is_image in layout.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_image:
            Image.new("RGB", (4, 4)).save(path)
        else:
            path.write_text("text")
    with pytest.raises(error_type) as error:
        load("imagefolder", tmp_path, "dataset.image_size=8", "dataset.val_size=0")
    assert words in one_line_error(error)


def write_classes(root: Path, per_class: int = 15) -> None:
    """train/ and test/ with classes a and b of ``per_class`` tiny PNGs each."""
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for number in range(per_class):
                Image.new("RGB", (4, 4), (number, 0, 0)).save(root / split / name / f"{number}.png")


@pytest.mark.parametrize("link, target", [
    ("train/a/loop", "../a"),  # a folder linking to the folder it is in
    ("train/a/up", ".."),  # ... or to one above: train/a/up/a/up/...
    ("test/b/inner/back", "../.."),  # deeper, under test/
])
def test_a_symlink_loop_in_an_image_folder_is_refused_in_one_line(tmp_path, link, target):
    write_classes(tmp_path)
    (tmp_path / link).parent.mkdir(exist_ok=True)
    (tmp_path / link).symlink_to(target, target_is_directory=True)
    with pytest.raises(ConfigError) as error:
        load("imagefolder", tmp_path, "dataset.val_size=0")
    real = (tmp_path / link).resolve()
    assert one_line_error(error) == (
        f"dataset 'imagefolder': {tmp_path / link} is a link to {real}, a folder it is in, so its "
        f"images would be listed again at every depth; remove the link (dataset.root={tmp_path})")


def test_an_image_that_links_to_itself_is_named_in_one_line(tmp_path):
    write_classes(tmp_path, per_class=2)
    (tmp_path / "train" / "a" / "self.png").symlink_to("self.png")
    with pytest.raises(CorruptDatasetError) as error:
        load("imagefolder", tmp_path, "dataset.val_size=0")
    assert one_line_error(error) == (
        f"dataset 'imagefolder': image file {tmp_path / 'train' / 'a' / 'self.png'} cannot be read "
        f"([Errno 40] Too many levels of symbolic links: '{tmp_path / 'train' / 'a' / 'self.png'}'); "
        f"fix or delete it")


def test_links_to_images_already_listed_count_once_and_across_classes_are_refused(tmp_path, caplog):
    write_classes(tmp_path)
    (tmp_path / "extra").mkdir()
    Image.new("RGB", (4, 4), (99, 0, 0)).save(tmp_path / "extra" / "new.png")
    # Within class a: a file link, a hard link and a linked folder holding a's own files again,
    # and a link to a file outside the folder (a real new image, kept).
    (tmp_path / "train" / "a" / "again.png").symlink_to(tmp_path / "train" / "a" / "0.png")
    os.link(tmp_path / "train" / "a" / "1.png", tmp_path / "train" / "a" / "hard.png")
    (tmp_path / "train" / "a" / "copies").mkdir()
    (tmp_path / "train" / "a" / "copies" / "2.png").symlink_to(tmp_path / "train" / "a" / "2.png")
    (tmp_path / "train" / "a" / "new.png").symlink_to(tmp_path / "extra" / "new.png")
    caplog.set_level(logging.INFO, logger="regbench")
    raw = load("imagefolder", tmp_path, "dataset.val_size=0")
    assert len(raw.train) == 31 and len(raw.test) == 30  # 30 files and new.png, each once
    assert sorted(int(image[0, 0, 0]) for image, label in samples(raw.train) if label == 0) == \
        [*range(15), 99]
    assert "imagefolder: 3 image paths lead to files already listed (links); each file is used " \
           "once" in [record.getMessage() for record in caplog.records]
    # The same file in two classes, or in train/ and test/: refused, naming both paths.
    for link, target, where in (("train/b/cat.png", "train/a/3.png", "classes"),
                                ("test/a/seen.png", "train/a/4.png", "splits")):
        (tmp_path / link).symlink_to(tmp_path / target)
        with pytest.raises(CorruptDatasetError) as error:
            load("imagefolder", tmp_path, "dataset.val_size=0")
        assert one_line_error(error) == (
            f"dataset 'imagefolder': {tmp_path / link} and {tmp_path / target} are the same file "
            f"(a link) in two {where}; remove one of them")
        (tmp_path / link).unlink()


def test_image_folder_needs_root_and_image_size(tmp_path):
    cfg = compose_config(["dataset=imagefolder", "dataset.num_workers=0"])
    with pytest.raises(ConfigError, match="dataset.root='' is not allowed: required"):
        DATASETS.get("imagefolder")(OmegaConf.to_object(cfg.dataset))
    make_image_folder(tmp_path)
    with pytest.raises(ConfigError, match="dataset.image_size=0 is not allowed"):
        load("imagefolder", tmp_path, "dataset.image_size=0")


# --- End to end: one short training run per format family ----------------------------------------

def test_mnist_trains_end_to_end(tmp_path):
    make_idx_dataset(tmp_path / "data", "MNIST", num_train=24, num_test=8)
    metrics = train_in_process(tmp_path / "run", [
        "dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
        "dataset.val_size=8", *TINY_RUN])
    assert metrics["status"] == "completed" and metrics["dataset"] == "mnist"
    assert read_metrics(tmp_path / "run")["epochs"] == 1


def test_cifar10_trains_end_to_end(tmp_path, skip_cifar_md5):
    make_cifar(tmp_path / "data", "cifar10", per_batch=4)
    metrics = train_in_process(tmp_path / "run", [
        "dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
        "dataset.val_size=4", *TINY_RUN])
    assert metrics["status"] == "completed" and metrics["dataset"] == "cifar10"


def test_pets_trains_end_to_end(tmp_path):
    make_pets(tmp_path / "data")
    metrics = train_in_process(tmp_path / "run", [
        "dataset=pets", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
        "dataset.val_size=3", "dataset.image_size=16", "regularizer=augmentation", *TINY_RUN])
    assert metrics["status"] == "completed" and metrics["dataset"] == "pets"


def test_image_folder_trains_end_to_end_with_worker_processes(tmp_path):
    make_image_folder(tmp_path / "folder")
    metrics = train_in_process(tmp_path / "run", [
        "dataset=imagefolder", f"dataset.root={tmp_path / 'folder'}", "dataset.val_size=2",
        "dataset.image_size=16", *TINY_RUN, "dataset.num_workers=1", "dataset.in_memory=false"])
    assert metrics["status"] == "completed" and metrics["dataset"] == "imagefolder"
    assert 0 <= metrics["test/acc"] <= 1


@pytest.mark.slow
def test_an_image_folder_run_holds_out_a_tenth_by_default_and_says_so(tmp_path, image_cache):
    """The default used to hold out 50 images, more than this folder has; now 3 of its 30, with
    the split sizes and the calibrators' small validation split each said in one line."""
    write_classes(tmp_path / "folder")
    result = run_cli(["dataset=imagefolder", "dataset.root=folder", "regularizer=early_stopping",
                      "trainer.keep_checkpoint=best", "trainer.epochs=1", "trainer.batch_size=4",
                      "model.hidden_sizes=[16]", "evaluation.figures=false",
                      "trainer.progress=false", "trainer.num_threads=1", "hydra.run.dir=run"],
                     cwd=tmp_path, env={"REGBENCH_CACHE": str(image_cache)})
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert ("imagefolder: 27 training, 3 validation (dataset.val_size=null: 10 % of 30, at most "
            "5000), 30 test examples") in output
    assert ("calibrators (temperature, platt, vector, isotonic) fitted on 3 validation examples, "
            "fewer than 300: their test/*@<calibrator> metrics are noisy; raise dataset.val_size to "
            "compare them") in output
    assert "Traceback" not in output and read_metrics(tmp_path / "run")["status"] == "completed"


def test_corrupt_image_in_a_worker_process_names_the_file(tmp_path):
    make_image_folder(tmp_path)
    broken = tmp_path / "train" / "cat" / "cat1.jpg"
    broken.write_bytes(b"this is not a JPEG")
    cfg = dataset_config("imagefolder", tmp_path, "dataset.image_size=8", "dataset.val_size=0",
                         "dataset.num_workers=1", "dataset.in_memory=false")
    data = build_data(cfg, batch_size=16, device=CPU, seed=0)
    with pytest.raises(CorruptDatasetError, match=f"image {broken} cannot be decoded"):
        list(data.train_eval)
