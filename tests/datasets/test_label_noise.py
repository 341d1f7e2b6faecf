"""dataset.label_noise (Zhang et al. 2017): corrupts training labels only, reproducibly."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from omegaconf import OmegaConf

from conftest import compose_config, train_in_process
from regbench.datasets import build_data
from regbench.datasets.base import ImageTensors, corrupt_labels


def labels_of(batches) -> torch.Tensor:
    return torch.cat([labels for _, labels in batches])


def test_fraction_of_changed_labels_matches_p_times_k_minus_1_over_k():
    clean = ImageTensors(torch.zeros(20000, 1, 2, 2, dtype=torch.uint8), torch.arange(20000) % 10)
    noisy = corrupt_labels(clean, fraction=0.4, num_classes=10, seed=0)
    changed = (noisy.labels != clean.labels).float().mean().item()
    # A replaced label is the true one with probability 1/K: expected 0.4 * 9/10 = 0.36.
    assert changed == pytest.approx(0.36, abs=0.01)
    assert noisy.labels.min() >= 0 and noisy.labels.max() <= 9
    assert torch.equal(noisy.images, clean.images)
    assert torch.equal(corrupt_labels(clean, 0.4, 10, seed=0).labels, noisy.labels)  # fixed by seed
    assert not torch.equal(corrupt_labels(clean, 0.4, 10, seed=1).labels, noisy.labels)


def test_file_based_splits_get_relabeled_without_decoding():
    class Images(Dataset):
        targets = [0, 1, 2, 3] * 50

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, index):
            return torch.full((1, 1, 1), index, dtype=torch.uint8), self.targets[index]

    noisy = corrupt_labels(Images(), fraction=1.0, num_classes=4, seed=0)
    labels = [noisy[i][1] for i in range(len(noisy))]
    assert sum(a != b for a, b in zip(labels, Images.targets)) > 100  # ~3/4 of 200 change
    assert noisy[7][0].item() == 7  # images untouched


def test_only_the_training_split_is_corrupted():
    def splits(noise: float):
        settings = OmegaConf.to_object(compose_config([f"dataset.label_noise={noise}"]))
        data = build_data(settings.dataset, 64, torch.device("cpu"), seed=0)
        return {name: labels_of(getattr(data, name)) for name in ("train_eval", "val", "test")}

    clean, noisy = splits(0.0), splits(0.5)
    assert torch.equal(clean["val"], noisy["val"]) and torch.equal(clean["test"], noisy["test"])
    changed = (clean["train_eval"] != noisy["train_eval"]).float().mean().item()
    assert changed == pytest.approx(0.45, abs=0.05)


@pytest.mark.slow
def test_memorizing_noisy_labels_widens_the_generalization_gap(tmp_path):
    common = ["trainer.epochs=100", "model.hidden_sizes=[512,512]"]
    clean = train_in_process(tmp_path / "clean", common)
    noisy = train_in_process(tmp_path / "noisy", [*common, "dataset.label_noise=0.4"])
    # Given enough epochs the network fits the corrupted training labels too (Zhang et al. 2017)
    # while test accuracy drops. Measured: train 1.0 / test 0.739 with p = 0.4 vs 1.0 / 0.969 clean
    # (30 epochs are not enough to memorize: 0.842 / 0.836).
    assert noisy["train/acc"] > 0.95
    assert noisy["test/acc"] < clean["test/acc"] - 0.1
    assert noisy["gap/acc"] > clean["gap/acc"] + 0.15
