"""dataset.corruption (Zhang et al. 2017's randomization tests) and fit/epoch (time to fit):
each corruption changes what it says and nothing else, reproducibly; a real MLP memorizes random
pixels but not their test images, and a fixed pixel shuffle costs a permutation-invariant MLP
nothing."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from scipy import integrate, stats

from conftest import compose_config, read_history, run_cli, train_in_process
from regbench.config import ConfigError
from regbench.datasets import build_data
from regbench.datasets.base import permute_each_image, permute_pixels, pixel_permutation
from regbench.run.probes import fit_epoch


def splits(*overrides: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    settings = OmegaConf.to_object(compose_config(list(overrides)))
    data = build_data(settings.dataset, 4096, torch.device("cpu"), seed=0)
    return {name: next(iter(getattr(data, name))) for name in ("train_eval", "val", "test")}


def test_permute_pixels_moves_positions_and_keeps_channels_together():
    images = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(1, 2, 3, 4)
    permutation = torch.tensor([11, 0, 5, 1, 2, 3, 4, 6, 7, 8, 9, 10])
    out = permute_pixels(images, permutation)
    # Output position j holds input position permutation[j], in both channels.
    assert out[0, 0].flatten().tolist() == permutation.tolist()
    assert out[0, 1].flatten().tolist() == (permutation + 12).tolist()


def test_shuffled_pixels_is_one_permutation_for_every_split_and_labels_stay():
    clean, shuffled = splits(), splits("dataset.corruption=shuffled_pixels")
    permutation = pixel_permutation(64, seed=0)
    assert not torch.equal(permutation, torch.arange(64))
    for name in clean:
        images, labels = clean[name]
        assert torch.equal(shuffled[name][0].flatten(1), images.flatten(1)[:, permutation])
        assert torch.equal(shuffled[name][1], labels)


def test_random_pixels_permute_each_training_image_differently_and_leave_val_test_clean():
    clean, scrambled = splits(), splits("dataset.corruption=random_pixels")
    before, after = clean["train_eval"][0].flatten(1), scrambled["train_eval"][0].flatten(1)
    # Each image keeps its own pixel values, in another order.
    assert torch.equal(before.sort(dim=1).values, after.sort(dim=1).values)
    assert (before != after).any(dim=1).float().mean() > 0.99
    # A different order per image: identical images come out in different orders.
    same = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4).expand(2, 1, 4, 4)
    orders = permute_each_image(same, seed=0).flatten(1)
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(orders, permute_each_image(same, seed=0).flatten(1))  # fixed by the seed
    for name in ("val", "test"):
        assert torch.equal(clean[name][0], scrambled[name][0])


def clipped_normal_moments(mean: float, std: float) -> tuple[float, float]:
    """Mean and std of clip(X, 0, 1) for X ~ N(mean, std^2), by numerical integration."""
    density = stats.norm(mean, std)
    inside = [integrate.quad(lambda x, k=k: x ** k * density.pdf(x), 0, 1)[0] for k in (1, 2)]
    above = density.sf(1)  # mass clipped to 1 (mass clipped to 0 adds nothing)
    first, second = inside[0] + above, inside[1] + above
    return first, (second - first ** 2) ** 0.5


def test_gaussian_images_have_the_data_moments_before_clipping():
    clean, noise = splits(), splits("dataset.corruption=gaussian")
    pixels = clean["train_eval"][0].double() / 255
    generated = noise["train_eval"][0].double() / 255
    mean, std = clipped_normal_moments(pixels.mean().item(), pixels.std().item())
    assert generated.mean().item() == pytest.approx(mean, abs=0.003)
    assert generated.std().item() == pytest.approx(std, abs=0.003)
    assert torch.equal(noise["train_eval"][1], clean["train_eval"][1])  # labels kept
    assert torch.equal(noise["test"][0], clean["test"][0])


def test_random_labels_randomize_every_training_label_and_label_noise_stays_the_fraction():
    clean = splits()["train_eval"][1]
    random = splits("dataset.corruption=random_labels")["train_eval"][1]
    partial = splits("dataset.corruption=random_labels", "dataset.label_noise=0.5")["train_eval"][1]
    shorthand = splits("dataset.label_noise=0.5")["train_eval"][1]
    # A replaced label is the true one with probability 1/10.
    assert (random != clean).float().mean().item() == pytest.approx(0.9, abs=0.03)
    assert (partial != clean).float().mean().item() == pytest.approx(0.45, abs=0.04)
    assert torch.equal(partial, shorthand)  # label_noise alone means random_labels at that fraction


def test_label_noise_with_a_pixel_corruption_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"dataset\.label_noise=0\.3 is not allowed: only with "
                                          r"dataset\.corruption=none or random_labels") as error:
        OmegaConf.to_object(compose_config(["dataset.corruption=gaussian", "dataset.label_noise=0.3"]))
    assert "\n" not in str(error.value)


def test_fit_epoch_is_the_first_epoch_at_the_threshold():
    history = [{"epoch": 1, "train/acc": 0.5}, {"epoch": 2, "train/acc": 0.985},
               {"epoch": 3, "train/acc": 0.99}, {"epoch": 4, "train/acc": 0.97}]
    assert fit_epoch(history, 0.99) == 3
    assert fit_epoch(history, 0.98) == 2
    assert fit_epoch(history, 0.995) is None


@pytest.mark.slow
def test_an_mlp_memorizes_random_pixels_and_ignores_a_fixed_shuffle(tmp_path):
    # 60 epochs at a constant lr fit 1257 random-pixel images with a 2x512 MLP (measured: train
    # accuracy 1.0 from epoch ~25, test accuracy ~0.1); a shuffle leaves test accuracy as it was.
    common = ["trainer.epochs=60", "model.hidden_sizes=[512,512]", "optimizer.schedule=none"]
    clean = train_in_process(tmp_path / "clean", common)
    shuffled = train_in_process(tmp_path / "shuffled", [*common, "dataset.corruption=shuffled_pixels"])
    scrambled = train_in_process(tmp_path / "random", [*common, "dataset.corruption=random_pixels"])
    assert scrambled["train/acc"] > 0.98 and scrambled["fit/epoch"] is not None
    assert scrambled["test/acc"] < 0.3  # near chance (0.1): nothing learned that transfers
    assert clean["fit/epoch"] < scrambled["fit/epoch"]  # real images fit sooner
    assert shuffled["test/acc"] == pytest.approx(clean["test/acc"], abs=0.03)
    assert shuffled["test/acc"] > 0.9


@pytest.mark.slow
def test_randomization_preset_and_report_overlay_training_loss(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["experiment=randomization", "seed=0", "trainer.epochs=2",
                      "model.hidden_sizes=[32]", "trainer.progress=false", "evaluation.figures=false",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list(sweep.glob("*/metrics.json"))) == 5
    assert all(len(read_history(folder.parent)) == 2 for folder in sweep.glob("*/metrics.json"))
    report = run_cli([str(sweep)], cwd=tmp_path, module="regbench.report")
    assert report.returncode == 0, report.stderr
    summary = (sweep / "summary.md").read_text()
    assert "## Randomization tests" in summary and "fit/epoch" in summary
    for corruption in ("none", "random_labels", "shuffled_pixels", "random_pixels", "gaussian"):
        assert f"dataset.corruption={corruption}" in summary
    assert (sweep / "train_loss.png").stat().st_size > 5000
