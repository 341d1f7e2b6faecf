"""dataset.classes: training, validation and test restricted to some classes, labels renumbered,
the other classes' test images kept aside (the held_out_classes OOD set)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from conftest import compose_config
from regbench.config import ConfigError, DatasetConfig
from regbench.datasets import DATASETS, build_data
from regbench.datasets.base import ImageTensors, RawSplits, keep_classes, split_labels

CPU = torch.device("cpu")
# Out of order on purpose: labels follow the order listed (7 -> 0, 2 -> 1, 9 -> 2).
KEPT = [7, 2, 9]


def digits_config(*overrides: str) -> DatasetConfig:
    return OmegaConf.to_object(compose_config(list(overrides)).dataset)


def all_batches(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (image, label) a batch iterator yields, concatenated."""
    pairs = list(batches)
    return torch.cat([images for images, _ in pairs]), torch.cat([labels for _, labels in pairs])


def image_rows(images: torch.Tensor) -> list[bytes]:
    """Each image as bytes, sorted: the same multiset of images compares equal."""
    return sorted(image.numpy().tobytes() for image in images)


@pytest.fixture(scope="module")
def digits():
    """The raw digits splits and the data a run with dataset.classes=[7,2,9] gets."""
    raw = DATASETS.get("digits")(digits_config())
    data = build_data(digits_config(f"dataset.classes=[{','.join(map(str, KEPT))}]"),
                      batch_size=64, device=CPU, seed=0)
    return raw, data


def test_the_loader_yields_only_the_kept_classes_renumbered_in_the_order_listed(digits):
    raw, data = digits
    for split in (data.train, data.val, data.test, data.train_eval):
        _, labels = all_batches(split)
        assert set(labels.tolist()) <= {0, 1, 2}
    train_images, train_labels = all_batches(data.train_eval)
    val_images, val_labels = all_batches(data.val)
    test_images, test_labels = all_batches(data.test)
    for new_label, old_label in enumerate(KEPT):
        # Training + validation hold exactly the raw training images of that class, the test
        # split exactly its raw test images.
        seen = torch.cat([train_images[train_labels == new_label], val_images[val_labels == new_label]])
        assert image_rows(seen) == image_rows(raw.train.images[raw.train.labels == old_label])
        assert image_rows(test_images[test_labels == new_label]) == \
            image_rows(raw.test.images[raw.test.labels == old_label])
    assert data.classes == ["7", "2", "9"] and data.num_classes == 3


def test_held_out_classes_are_never_seen_in_training_and_are_all_the_other_test_images(digits):
    raw, data = digits
    held_images, held_labels = all_batches(data.held_out)
    assert not set(held_labels.tolist()) & set(KEPT)
    other = ~torch.isin(raw.test.labels, torch.tensor(KEPT))
    assert image_rows(held_images) == image_rows(raw.test.images[other])
    assert len(held_labels) == int(other.sum())
    train_images, _ = all_batches(data.train_eval)
    val_images, _ = all_batches(data.val)
    # No training or validation image is one of the held-out classes' training images.
    held_train = set(image_rows(raw.train.images[~torch.isin(raw.train.labels, torch.tensor(KEPT))]))
    assert not held_train & set(image_rows(torch.cat([train_images, val_images])))


def test_without_dataset_classes_every_class_is_kept_and_nothing_is_held_out():
    data = build_data(digits_config(), batch_size=64, device=CPU, seed=0)
    assert data.held_out is None and data.num_classes == 10


class LabelledFiles(Dataset):
    """A file-based split stand-in: images decoded on access, labels in ``targets``."""

    def __init__(self, labels: list[int]) -> None:
        self.targets = labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return torch.full((1, 2, 2), index, dtype=torch.uint8), self.targets[index]


def test_a_file_based_split_is_restricted_and_relabelled_without_decoding_it_in_memory():
    labels = [0, 1, 2, 3, 2, 1, 0]
    raw = RawSplits(LabelledFiles(labels), LabelledFiles(labels), ["a", "b", "c", "d"])
    cfg = DatasetConfig(name="files", classes=[2, 0])
    restricted, held_out = keep_classes(cfg, raw)
    assert split_labels(restricted.train).tolist() == [1, 0, 0, 1]  # images 0, 2, 4, 6
    assert [int(restricted.train[i][0][0, 0, 0]) for i in range(4)] == [0, 2, 4, 6]
    assert [restricted.test[i][1] for i in range(4)] == [1, 0, 0, 1]
    assert [int(held_out[i][0][0, 0, 0]) for i in range(len(held_out))] == [1, 3, 5]
    assert restricted.classes == ["c", "a"]


@pytest.mark.parametrize("classes, message", [
    ([3, 1, 3], "dataset.classes=[3, 1, 3] is not allowed: each class once (repeated: 3)"),
    ([4], "dataset.classes=[4] is not allowed: 2 class indices or more"),
    ([-1, 2], "dataset.classes=[-1, 2] is not allowed: class indices >= 0"),
])
def test_repeated_single_or_negative_classes_are_refused_in_one_line(classes, message):
    with pytest.raises(ConfigError) as error:
        DatasetConfig(name="digits", classes=classes)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_class_the_dataset_does_not_have_is_refused_naming_the_valid_indices():
    with pytest.raises(ConfigError) as error:
        build_data(digits_config("dataset.classes=[0,10]"), batch_size=64, device=CPU, seed=0)
    assert str(error.value) == ("dataset.classes=[0, 10] is not allowed: class indices 0..9 of "
                                "digits (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)")


def test_classes_without_test_images_are_refused():
    images = torch.zeros((4, 1, 2, 2), dtype=torch.uint8)
    raw = RawSplits(ImageTensors(images, torch.tensor([0, 1, 2, 2])),
                    ImageTensors(images, torch.tensor([2, 2, 2, 2])), ["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"classes with test images \(x's test split has none"):
        keep_classes(DatasetConfig(name="x", classes=[0, 1]), raw)
