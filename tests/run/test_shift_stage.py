"""run/shift_stage.py (evaluation.shift): the keys of a trained digits run and how they are made
(per-severity and overall means of the per-corruption values, a corruption that changes nothing
giving the clean test metrics back, the same images whatever else runs), the published MNIST-C
files through a whole run, a test split read by a DataLoader, the refusals before training, and
one run from the command line."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, events, read_metrics, run_cli, train_in_process
from regbench.cli.compose import compose_settings
from regbench.config import SHIFT_SEVERITIES, ConfigError
from regbench.datasets.base import ImageTensors, TensorBatches
from regbench.datasets.corrupted import CIFAR_C_CORRUPTIONS, MNIST_C_CORRUPTIONS
from regbench.evaluation import shift
from regbench.run import shift_stage
from regbench.run.engine import Run
from regbench.run.shift_stage import SECONDS_KEY, SET_METRICS, chunks, mean_key, set_generator
from regbench.run.spec import corruption_key, severity_key

CORRUPTIONS = ("gaussian_noise", "contrast", "pixelate")
SEVERITIES = (1, 3, 5)
SHIFTED = ["evaluation.shift=standard", f"evaluation.shift_corruptions=[{','.join(CORRUPTIONS)}]",
           f"evaluation.shift_severities=[{','.join(map(str, SEVERITIES))}]"]


def trained(overrides: list[str]) -> tuple[Run, dict]:
    """A run built as the CLI builds it, trained, and its test metrics."""
    run = Run.build(compose_settings([*FAST, "trainer.epochs=2", *overrides]))
    run.fit()
    return run, run.test()


@pytest.fixture(scope="module")
def digits_run() -> tuple[Run, dict]:
    return trained(SHIFTED)


def without_seconds(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != SECONDS_KEY}


def test_every_corruption_and_severity_has_its_metrics_and_nothing_else_is_measured(digits_run):
    _, metrics = digits_run
    per_set = {key for key in metrics if key.startswith("shift/") and key.count("/") == 3}
    assert per_set == {corruption_key(c, s, m) for c in CORRUPTIONS for s in SEVERITIES for m in SET_METRICS}
    assert {key for key in metrics if "@s" in key} == {
        severity_key(m, s) for m in ("acc", "ece") for s in SEVERITIES}
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            assert 0 <= metrics[corruption_key(corruption, severity, "acc")] <= 1
            assert 0 <= metrics[corruption_key(corruption, severity, "brier")] <= 2
            assert 0.1 <= metrics[corruption_key(corruption, severity, "mean_confidence")] <= 1
    assert metrics[SECONDS_KEY] > 0


def test_severity_means_and_overall_means_are_means_of_the_per_corruption_values(digits_run):
    _, metrics = digits_run
    for severity in SEVERITIES:
        for metric in ("acc", "ece"):
            assert metrics[severity_key(metric, severity)] == pytest.approx(statistics.fmean(
                metrics[corruption_key(c, severity, metric)] for c in CORRUPTIONS), abs=1e-12)
    for metric in SET_METRICS:
        assert metrics[mean_key(metric)] == pytest.approx(statistics.fmean(
            metrics[corruption_key(c, s, metric)] for c in CORRUPTIONS for s in SEVERITIES), abs=1e-12)


def test_contrast_at_severity_5_takes_most_of_the_models_confidence(digits_run):
    # A factor 0.15 on every pixel's deviation from the image mean (make_cifar_c.py): the inputs,
    # and so the logits, move towards those of a flat image. A check that corrupted images, not
    # the clean ones, reached the model (accuracy, measured at 0.90 against 0.93, barely moves).
    _, metrics = digits_run
    assert metrics[corruption_key("contrast", 5, "mean_confidence")] < metrics["test/mean_confidence"] / 2


def test_a_corruption_that_changes_nothing_gives_the_clean_test_metrics_back(digits_run, monkeypatch):
    run, metrics = digits_run
    monkeypatch.setitem(shift.CORRUPTION_FUNCTIONS, "contrast", lambda images, factor, generator: images)
    found = shift_stage.shift_metrics(run, metrics)
    for severity in SEVERITIES:
        for metric in ("acc", "nll", "ece", "brier", "mean_confidence", "ece@temperature"):
            assert found[corruption_key("contrast", severity, metric)] == pytest.approx(
                metrics[f"test/{metric}"], abs=1e-6), metric


def test_the_same_run_draws_the_same_images_whatever_the_global_random_state(digits_run):
    run, metrics = digits_run
    torch.manual_seed(12345)
    again = shift_stage.shift_metrics(run, metrics)
    assert without_seconds(again) == without_seconds(
        {key: value for key, value in metrics.items() if key.startswith("shift/")})


def test_measuring_one_corruption_leaves_its_images_as_in_the_whole_suite(digits_run, monkeypatch):
    run, metrics = digits_run
    monkeypatch.setattr(run.settings.evaluation, "shift_corruptions", ["gaussian_noise"])
    alone = shift_stage.shift_metrics(run, metrics)
    for severity in SEVERITIES:
        key = corruption_key("gaussian_noise", severity, "nll")
        assert alone[key] == metrics[key]
    assert not any("/contrast/" in key for key in alone)


def test_each_seed_corruption_and_severity_has_its_own_stream_of_draws():
    def draws(seed, corruption, severity):
        generator = set_generator(seed, corruption, severity, torch.device("cpu"))
        return torch.rand(5, generator=generator)

    assert torch.equal(draws(0, "fog", 3), draws(0, "fog", 3))
    for other in ((1, "fog", 3), (0, "fog", 4), (0, "gaussian_noise", 3)):
        assert not torch.equal(draws(0, "fog", 3), draws(*other))


def test_the_temperature_is_the_calibration_panels_or_fitted_the_same_way(digits_run, monkeypatch):
    run, metrics = digits_run
    assert shift_stage.validation_temperature(run, {}) == pytest.approx(metrics["temperature"],
                                                                         rel=1e-6)
    monkeypatch.setattr(run.data, "val", [])
    found = shift_stage.shift_metrics(run, {})
    assert found and not any(key.endswith("ece@temperature") for key in found)


@pytest.mark.parametrize("batch_size", [1, 3, 5, 10])
def test_chunks_hold_the_same_examples_whatever_the_batch_size(batch_size):
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    labels = torch.arange(10)
    batches = TensorBatches(ImageTensors(images, labels), batch_size, shuffle=False,
                            drop_last=False, device=torch.device("cpu"))
    found = list(chunks(batches, 4, torch.device("cpu")))
    assert [chunk_labels.tolist() for _, chunk_labels in found] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [chunk_images.flatten().tolist() for chunk_images, _ in found] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_the_schema_offers_the_severities_the_corruptions_have():
    assert SHIFT_SEVERITIES == shift.SEVERITIES


# --- a test split read from files by a DataLoader ------------------------------------------------

def write_image_folder(root: Path, side: int = 12, per_class: int = 8) -> None:
    """train/ and test/ of three classes of RGB PNGs, each class one colour plus noise."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 2)):
        for number, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 80, (side, side, 3), dtype=np.uint8)
                pixels[..., number] += 170
                Image.fromarray(pixels).save(folder / f"{index}.png")


def test_a_test_split_read_by_a_dataloader_gives_what_the_same_images_in_memory_give(tmp_path):
    write_image_folder(tmp_path)
    run, metrics = trained(["dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.in_memory=false",
                            "dataset.num_workers=0", "dataset.val_size=3", "trainer.batch_size=4",
                            "evaluation.calibrators=[temperature]", "evaluation.shift=standard",
                            "evaluation.shift_severities=[2]"])
    assert not isinstance(run.data.test, TensorBatches)  # a DataLoader decoding the PNG files
    assert {key.split("/")[1] for key in metrics if key.startswith("shift/") and "@" not in key
            and key != SECONDS_KEY and key.count("/") == 3} == set(shift.CORRUPTIONS)  # saturate too
    images, labels = (torch.cat(parts) for parts in zip(*run.data.test))
    run.data.test = TensorBatches(ImageTensors(images, labels), 5, shuffle=False, drop_last=False,
                                  device=run.device)
    in_memory = shift_stage.shift_metrics(run, metrics)
    assert without_seconds(in_memory) == without_seconds(
        {key: value for key, value in metrics.items() if key.startswith("shift/")})


# --- the published MNIST-C files -------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's IDX format: 0, 0, type 0x08 (ubyte), ndim, big-endian int32 dimensions, the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_and_mnist_c(root: Path, test_count: int = 12) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny MNIST IDX files, and MNIST-C's folders of .npy files: uint8 [N, 28, 28, 1] images and
    int64 labels per corruption."""
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 40), ("t10k", test_count)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    published = {}
    for name in ("identity",) + MNIST_C_CORRUPTIONS:
        folder = root / "mnist_c" / name
        folder.mkdir(parents=True)
        images = rng.integers(0, 256, (test_count, 28, 28, 1), dtype=np.uint8)
        labels = rng.integers(0, 10, test_count).astype(np.int64)
        np.save(folder / "test_images.npy", images)
        np.save(folder / "test_labels.npy", labels)
        published[name] = images, labels
    return published


def test_published_mnist_c_is_measured_at_its_one_level_on_the_files_images(tmp_path):
    published = write_mnist_and_mnist_c(tmp_path)
    # fp32 (trainer.amp=false): the check below predicts the images again in fp32, and the default
    # on a CPU with native bf16 would be bf16 (machine.autocast_dtype).
    run, metrics = trained(["dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false",
                            "model.hidden_sizes=[16]", "evaluation.calibrators=[temperature]",
                            "evaluation.shift=published", "trainer.amp=false"])
    assert not any("@s" in key for key in metrics)  # severity 0 is in no per-severity mean
    assert metrics[mean_key("acc")] == pytest.approx(statistics.fmean(
        metrics[corruption_key(name, 0, "acc")] for name in MNIST_C_CORRUPTIONS), abs=1e-12)
    # Accuracy and NLL on one file's images and labels, predicted here by the model from the
    # .npy arrays (the NLL pairs each image with its own label).
    images, labels = published["fog"]
    inputs = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.1307) / 0.3081
    run.model.eval()
    with torch.no_grad():
        logits = run.model(inputs)
    labels = torch.from_numpy(labels)
    assert metrics[corruption_key("fog", 0, "acc")] == pytest.approx(
        (logits.argmax(dim=1) == labels).float().mean().item())
    assert metrics[corruption_key("fog", 0, "nll")] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


def write_cifar_10_c(root: Path, per_severity: int = 2) -> None:
    """Every file of CIFAR-10-C: uint8 [5 N, 32, 32, 3] per corruption, severity-major, and labels."""
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True)
    np.save(folder / "labels.npy", np.zeros(5 * per_severity, dtype=np.uint8))
    for name in CIFAR_C_CORRUPTIONS:
        np.save(folder / f"{name}.npy", np.zeros((5 * per_severity, 32, 32, 3), dtype=np.uint8))


def test_published_cifar_c_sets_are_the_corruptions_and_severities_asked_for(tmp_path):
    write_cifar_10_c(tmp_path)
    settings = compose_settings(["dataset=cifar10", f"dataset.root={tmp_path}",
                                 "evaluation.shift=published",
                                 "evaluation.shift_corruptions=[snow,fog]",
                                 "evaluation.shift_severities=[2,5]"])
    assert set(shift_stage.published_shift_sets(settings)) == {("fog", 2), ("fog", 5), ("snow", 2),
                                                               ("snow", 5)}
    settings.evaluation.shift_corruptions = ["shear"]  # MNIST-C's, not CIFAR-10-C's
    with pytest.raises(ConfigError) as error:
        shift_stage.check_shift_settings(settings)
    assert str(error.value).startswith("evaluation.shift_corruptions=['shear'] is not allowed: "
                                       "corruptions published for cifar10: gaussian_noise, ")


# --- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["evaluation.shift=standard", "evaluation.shift_corruptions=[fogg]"],
     "evaluation.shift_corruptions=['fogg'] is not allowed: names from gaussian_noise, "),
    (["evaluation.shift=standard", "evaluation.shift_corruptions=[saturate]"],
     "evaluation.shift_corruptions=['saturate'] is not allowed: corruptions of gray images: "
     "saturate changes colour saturation and digits's images are gray (1 channel)"),
    (["evaluation.shift_severities=[0,6]"], "evaluation.shift_severities=[0, 6] is not allowed: "
                                            "a non-empty list of distinct severities from 1 to 5"),
    (["evaluation.shift_severities=[2,2]"], "evaluation.shift_severities=[2, 2] is not allowed"),
    (["evaluation.shift_corruptions=[]"], "evaluation.shift_corruptions=[] is not allowed"),
    (["evaluation.shift=published"], "evaluation.shift='published' is not allowed: a dataset with "
                                     "published corrupted test files (cifar10, cifar100, mnist); "
                                     "digits has none: use evaluation.shift=standard"),
    (["evaluation.shift=published", "dataset=cifar10", "dataset.download=false"],
     "published corrupted test set of 'cifar10': "),
    (["evaluation.shift=published", "dataset=mnist", "dataset.classes=[0,1]"],
     "evaluation.shift='published' is not allowed: only with every class (dataset.classes=null)"),
])
def test_shift_mistakes_stop_before_training(tmp_path, data_root, overrides, message):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as error:
        train_in_process(run_dir, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (run_dir / "history.jsonl").exists()


def test_missing_published_files_are_named_with_their_folder(data_root):
    settings = compose_settings(["evaluation.shift=published", "dataset=cifar10"])
    with pytest.raises(ConfigError) as error:
        shift_stage.check_shift_settings(settings)
    assert f"{data_root / 'CIFAR-10-C'} lacks 20 of its 20 files" in str(error.value)
    assert "CIFAR-10-C.tar from https://zenodo.org/records/2535967" in str(error.value)


@pytest.mark.parametrize("shape, message", [
    ((4, 8, 8), "a dataset of gray (1 channel) or RGB (3 channels) images; digits's have 4"),
    ((1, 8, 6), "images of 8x8 pixels or more; digits's are 8x6"),
])
def test_images_the_corruptions_cannot_take_are_refused(shape, message):
    settings = compose_settings(["evaluation.shift=standard"])
    with pytest.raises(ConfigError, match="evaluation.shift='standard' is not allowed") as error:
        shift_stage.check_shift_images(settings, shape)
    assert message in str(error.value)


# --- from the command line ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("overrides, line", [
    (["evaluation.shift=published"], "regbench: error: evaluation.shift='published' is not allowed"),
    (["evaluation.shift=standard", "evaluation.shift_corruptions=[saturate]"],
     "regbench: error: evaluation.shift_corruptions=['saturate'] is not allowed"),
])
def test_the_cli_refuses_in_one_line_and_trains_nothing(tmp_path, overrides, line):
    result = run_cli([*overrides, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(line)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_cli_run_with_the_standard_suite_records_every_key_and_the_severity_curves(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["evaluation.shift=standard", "trainer.epochs=1", "trainer.progress=false",
                      "trainer.num_threads=1", "evaluation.figures=false",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(run_dir)
    gray = shift.standard_suite(1)
    assert len(gray) == 14 and "saturate" not in gray
    for corruption in gray:
        for severity in shift.SEVERITIES:
            for metric in SET_METRICS:
                assert corruption_key(corruption, severity, metric) in metrics
    for key in ("shift/acc", "shift/ece", "shift/nll", "shift/ece@temperature", "shift/acc@s5",
                "shift/ece@s1", SECONDS_KEY):
        assert key in metrics
    assert "shift (standard): 14 corruptions x 5 severities on 360 test images in " in result.stdout
    scalars = events(run_dir)
    for metric in ("acc", "ece"):
        curve = scalars.Scalars(f"{shift_stage.TENSORBOARD_TAG}/{metric}")
        assert [point.step for point in curve] == list(shift.SEVERITIES)
        assert [point.value for point in curve] == pytest.approx(
            [metrics[severity_key(metric, severity)] for severity in shift.SEVERITIES], rel=1e-6)
