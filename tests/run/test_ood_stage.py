"""evaluation.ood in a run: the sets it builds (shape, channels, size), the metrics and test_ood.npz
it writes after training, and the refusals before training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, events, read_metrics, run_cli, train_in_process
from regbench.cli.compose import compose_settings
from regbench.config import ConfigError
from regbench.evaluation.ood import METRICS, SCORES
from regbench.run.engine import Run
from regbench.run.ood_stage import folder_set_name, to_model_shape
from regbench.run.spec import TEST_OOD_FILE

SYNTHETIC = ["gaussian", "uniform", "rademacher", "blobs"]
# A colour and its gray value by the ITU-R 601-2 luma weights: 0.2989 R + 0.587 G + 0.114 B.
RGB, GRAY = (200, 100, 50), 124  # 124.18 by hand


def build_run(*overrides: str) -> Run:
    return Run.build(compose_settings([*FAST, "trainer.epochs=1", *overrides]))


def constant_images(count: int, value_of, channels: int, height: int, width: int) -> torch.Tensor:
    return torch.stack([torch.full((channels, height, width), value_of(index), dtype=torch.uint8)
                        for index in range(count)])


# --- converting images to the model's input --------------------------------------------------

def test_rgb_images_become_gray_by_the_luma_weights_at_the_model_size():
    images = torch.tensor(RGB, dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 5, 7)
    converted = to_model_shape(images, (1, 8, 8))
    assert converted.shape == (2, 1, 8, 8) and converted.dtype == torch.uint8
    assert converted.unique().tolist() == [GRAY]


def test_gray_images_become_rgb_by_copying_the_channel():
    images = torch.arange(2 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    converted = to_model_shape(images, (3, 4, 4))
    assert converted.shape == (2, 3, 4, 4)
    for channel in range(3):
        assert torch.equal(converted[:, channel], images[:, 0])


def test_folder_set_names_keep_only_letters_digits_and_underscores():
    assert folder_set_name("/data/My Textures-v2.1/") == "folder_My_Textures_v2_1"
    assert folder_set_name("images") == "folder_images"


# --- the sets a run builds ---------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (MNIST's raw format): 0, 0, type 0x08 (ubyte), ndim, big-endian int32 sizes, the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path, test_values: list[int]) -> None:
    """Fashion-MNIST's four raw files; test image i is 28x28 of the value test_values[i]."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    test = np.stack([np.full((28, 28), value) for value in test_values])
    for prefix, images in (("train", np.zeros((3, 28, 28))), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(len(images)) % 10)


def test_another_dataset_is_its_test_split_at_the_model_size(tmp_path):
    write_fashion_mnist(tmp_path, [0, 40, 255, 90])
    run = build_run("evaluation.ood=[fashion_mnist]", f"dataset.root={tmp_path}",
                    "dataset.download=false")
    images = run.ood_sets.loaded["fashion_mnist"]
    assert images.shape == (4, 1, 8, 8) and images.dtype == torch.uint8
    assert [image.unique().tolist() for image in images] == [[0], [40], [255], [90]]


def test_a_folder_is_every_image_under_it_in_the_model_channels_and_size(tmp_path):
    folder = tmp_path / "textures"
    (folder / "deeper").mkdir(parents=True)
    Image.new("RGB", (12, 10), RGB).save(folder / "wide.png")
    Image.new("RGB", (20, 30), RGB).save(folder / "deeper" / "tall.jpg", quality=100)
    Image.new("L", (9, 9), 77).save(folder / "deeper" / "gray.png")
    (folder / "notes.txt").write_text("not an image")
    run = build_run(f"evaluation.ood=[folder:{folder}]")
    images = run.ood_sets.loaded["folder_textures"]
    assert images.shape == (3, 1, 8, 8)
    # Sorted paths: deeper/gray.png, deeper/tall.jpg, wide.png. JPEG may move a flat colour by 1.
    assert images[0].unique().tolist() == [77]
    assert (images[1].int() - GRAY).abs().max() <= 1
    assert images[2].unique().tolist() == [GRAY]


# --- metrics and test_ood.npz after training ---------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch digits run on classes 0-4 with every built-in OOD set."""
    run_dir = tmp_path_factory.mktemp("ood") / "run"
    sets = ["held_out_classes", *SYNTHETIC]
    metrics = train_in_process(run_dir, ["trainer.epochs=1", "dataset.classes=[0,1,2,3,4]",
                                         f"evaluation.ood=[{','.join(sets)}]"])
    with np.load(run_dir / TEST_OOD_FILE, allow_pickle=False) as file:
        scores = {name: file[name] for name in file.files}
    return metrics, scores, sets


def test_every_set_has_every_metric_of_every_score_and_their_means(trained):
    metrics, _, sets = trained
    for name in sets:
        for metric in METRICS:
            for score in SCORES:
                assert math.isfinite(metrics[f"ood/{name}/{metric}_{score}"])
    for score in SCORES:
        for metric in ("auroc", "fpr95"):
            values = [metrics[f"ood/{name}/{metric}_{score}"] for name in sets]
            assert metrics[f"ood/{metric}_{score}"] == pytest.approx(np.mean(values), abs=1e-12)
    assert metrics["ood/seconds"] > 0


def test_the_score_file_holds_the_test_split_and_each_set_at_their_sizes(trained):
    metrics, scores, sets = trained
    expected = {f"{name}_{score}" for name in ["in", *sets] for score in SCORES}
    assert set(scores) == expected
    assert all(values.dtype == np.float32 for values in scores.values())
    test_size = len(scores["in_msp"])
    # Digits' test split holds 36 images of each class: 5 classes kept, 5 held out.
    assert test_size == 180 and len(scores["held_out_classes_msp"]) == 180
    for name in SYNTHETIC:  # as many as the test split
        assert len(scores[f"{name}_energy"]) == test_size


def test_the_auroc_recomputed_from_the_score_file_is_the_metric(trained):
    from sklearn.metrics import roc_auc_score

    metrics, scores, sets = trained
    for name in sets:
        for score in SCORES:
            inside, outside = scores[f"in_{score}"], scores[f"{name}_{score}"]
            is_in = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
            recomputed = roc_auc_score(is_in, np.r_[inside, outside])
            # The file is float32, the metrics were computed in float64: a tie made by rounding
            # moves the AUROC by half a pair in 180 x 180.
            assert recomputed == pytest.approx(metrics[f"ood/{name}/auroc_{score}"],
                                               abs=2 / (len(inside) * len(outside)))


def test_the_scores_are_the_trained_model_s_not_constants(trained):
    metrics, scores, _ = trained
    # Uniform noise is far from digits: every score tells it apart better than chance.
    for score in SCORES:
        assert metrics[f"ood/uniform/auroc_{score}"] > 0.6
    assert np.ptp(scores["in_energy"]) > 0


def test_no_ood_sets_means_no_ood_keys_and_no_file(tmp_path):
    metrics = train_in_process(tmp_path / "run", ["trainer.epochs=1"])
    assert not [key for key in metrics if key.startswith("ood/")]
    assert not (tmp_path / "run" / TEST_OOD_FILE).exists()


# --- refusals before training ------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["evaluation.ood=[textures]"],
     "evaluation.ood='textures' is not allowed: held_out_classes, gaussian, uniform, rademacher, "
     "blobs, a dataset (cifar10, cifar100, fashion_mnist, mnist, pets, svhn) or folder:<path to a "
     "folder of images>"),
    (["evaluation.ood=[held_out_classes]"],
     "evaluation.ood='held_out_classes' is not allowed: with dataset.classes, the classes to train "
     "on (e.g. dataset.classes=[0,1,2,3,4])"),
    (["evaluation.ood=[held_out_classes]", "dataset.classes=[0,1,2,3,4,5,6,7,8,9]"],
     "with dataset.classes leaving out a class that has test images"),
    (["evaluation.ood=[digits]"], "evaluation.ood='digits' is not allowed: another dataset than "
                                  "the one trained on"),
    (["evaluation.ood=[imagefolder]"], "evaluation.ood='imagefolder' is not allowed"),
    (["evaluation.ood=[gaussian,uniform,gaussian]"],
     "evaluation.ood=['gaussian', 'uniform', 'gaussian'] is not allowed: each OOD set once "
     "(named twice: gaussian"),
    (["evaluation.ood=[folder:/no/such/folder]"],
     "evaluation.ood='folder:/no/such/folder' is not allowed: folder:<path> naming a folder of "
     "images (/no/such/folder is not a folder)"),
])
def test_bad_ood_sets_are_refused_in_one_line_when_the_run_is_built(overrides, message):
    with pytest.raises(ConfigError) as error:
        build_run(*overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_folder_without_images_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"a folder holding images \(.*empty has no file ending"):
        build_run(f"evaluation.ood=[folder:{tmp_path / 'empty'}]")


def test_an_ood_dataset_missing_offline_is_refused_naming_its_folder_and_how_to_get_it(tmp_path):
    with pytest.raises(ConfigError) as error:
        build_run("evaluation.ood=[svhn]", f"dataset.root={tmp_path}", "dataset.download=false")
    assert str(error.value).startswith(f"evaluation.ood=svhn: dataset 'svhn': files not found under "
                                       f"{tmp_path} (expected train_32x32.mat, test_32x32.mat); "
                                       f"rerun with dataset.download=true")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    (["evaluation.ood=[textures]"], "regbench: error: evaluation.ood='textures' is not allowed"),
    (["dataset.classes=[0,0,1]", "evaluation.ood=[held_out_classes]"],
     "regbench: error: dataset.classes=[0, 0, 1] is not allowed: each class once (repeated: 0)"),
])
def test_the_command_line_refuses_bad_ood_settings_in_one_line_before_training(tmp_path, overrides,
                                                                                message):
    result = run_cli([*overrides, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.strip().startswith(message)
    assert "epoch 1" not in result.stdout + result.stderr and not (tmp_path / "run").exists()


# --- end to end --------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_digits_run_with_held_out_classes_and_gaussian_noise_records_ood_everywhere(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["dataset.classes=[0,1,2,3,4]", "evaluation.ood=[held_out_classes,gaussian]",
                      "trainer.epochs=2", "trainer.progress=false", "trainer.num_threads=1",
                      "evaluation.figures=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("ood: held_out_classes (180 images), gaussian (180 images) against 180 test images in"
            in result.stdout + result.stderr)
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed"
    for name in ("held_out_classes", "gaussian"):
        assert 0 <= metrics[f"ood/{name}/auroc_energy"] <= 1
    with np.load(run_dir / TEST_OOD_FILE, allow_pickle=False) as file:
        assert len(file["in_msp"]) == 180 and len(file["gaussian_msp"]) == 180
    histograms = events(run_dir).Tags()["histograms"]
    for name in ("in", "held_out_classes", "gaussian"):
        for score in SCORES:
            assert f"ood/{name}/{score}" in histograms
