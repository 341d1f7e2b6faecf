"""Image folders and Pets decoded once into a cache file (datasets/cache.py), the sizes rule and
the crops of larger stored images (imagefolder.py's Sizing, crops.py). Real files: PNG/JPEG images
written with PIL into the layouts the loaders read. No timing assertions."""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config, run_cli
from regbench.config import ConfigError, DatasetConfig
from regbench.datasets import DATASETS, build_data
from regbench.datasets.base import CorruptDatasetError, ImageTensors
from regbench.datasets.cache import lock_file
from regbench.datasets.crops import CroppedBatches, random_square_crops
from regbench.datasets.imagefolder import ImageFiles
from regbench.machine import available_cores

CPU = torch.device("cpu")
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40)}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("REGBENCH_CACHE", str(folder))
    return folder


def write_folder(root: Path, sizes=((20, 12),), per_class: int = 3) -> list[Path]:
    """train/ and test/ with two classes of solid-colour PNGs, cycling through ``sizes`` (w, h)."""
    paths = []
    for split in ("train", "test"):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for number in range(per_class):
                path = root / split / name / f"{number}.png"
                Image.new("RGB", sizes[(len(paths)) % len(sizes)], colour).save(path)
                paths.append(path)
    return paths


def dataset_config(root: Path, *overrides: str) -> DatasetConfig:
    cfg = compose_config(["dataset=imagefolder", f"dataset.root={root}", "dataset.val_size=0",
                          *overrides])
    return OmegaConf.to_object(cfg.dataset)


def load(root: Path, *overrides: str):
    return DATASETS.get("imagefolder")(dataset_config(root, *overrides))


def cache_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("*.pt"))


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


# --- the cache: built once, reused, invalidated --------------------------------------------------

def test_cache_is_built_once_then_reused(tmp_path, cache, caplog):
    write_folder(tmp_path / "data")
    caplog.set_level(logging.INFO, logger="regbench")
    first = load(tmp_path / "data")
    assert isinstance(first.train, ImageTensors) and first.train.images.shape == (6, 3, 12, 20)
    [name] = cache_files(cache)
    assert any(m.startswith("imagefolder: decoded 12 images once into") for m in messages(caplog))
    written = (cache / name).stat().st_mtime_ns

    caplog.clear()
    second = load(tmp_path / "data")
    assert not any(" images once into " in m for m in messages(caplog))
    assert any(m.startswith("imagefolder: loaded 12 decoded images from") for m in messages(caplog))
    assert cache_files(cache) == [name] and (cache / name).stat().st_mtime_ns == written
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    # The pixels are the images' (solid colours survive PNG exactly).
    assert first.train.images[0, :, 0, 0].tolist() == list(COLOURS["cat"])


def rewrite(path: Path, colour: tuple[int, int, int], size=(20, 12)) -> None:
    Image.new("RGB", size, colour).save(path)


@pytest.mark.parametrize("change", ["content", "content, old mtime restored", "size", "mtime",
                                    "target size"])
def test_cache_is_invalidated_by_any_change(tmp_path, cache, change):
    paths = write_folder(tmp_path / "data")
    load(tmp_path / "data")
    [before] = cache_files(cache)
    first = paths[0]  # train/cat/0.png: the first training image
    stat = first.stat()
    overrides = []
    if change.startswith("content"):  # same byte count, new pixels, new mtime
        rewrite(first, (1, 2, 3))
        assert first.stat().st_size == stat.st_size
        if change.endswith("restored"):  # as cp -p, rsync -t or a careful editor leave it
            os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            assert first.stat().st_mtime_ns == stat.st_mtime_ns
    elif change == "size":  # a larger file with the same mtime
        Image.effect_noise((20, 12), 60).convert("RGB").save(first)
        os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif change == "mtime":
        os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    else:
        overrides = ["dataset.image_size=8"]
    raw = load(tmp_path / "data", *overrides)
    after = cache_files(cache)
    assert len(after) == 2 and before in after  # a new key, a new file; the old one is untouched
    if change.startswith("content"):
        assert raw.train.images[0, :, 0, 0].tolist() == [1, 2, 3]
    if change == "target size":
        assert raw.train.images.shape == (6, 3, 9, 9) and raw.crop_size == 8


def test_in_memory_false_and_over_budget_use_the_dataloader_path(tmp_path, cache, caplog):
    write_folder(tmp_path / "data")
    raw = load(tmp_path / "data", "dataset.in_memory=false")
    assert isinstance(raw.train, ImageFiles) and cache_files(cache) == []
    caplog.set_level(logging.INFO, logger="regbench")
    # 12 images of 3x12x20 bytes = 8,640 bytes > 1e-6 GB = 1,000 bytes.
    raw = load(tmp_path / "data", "dataset.memory_budget_gb=1e-6")
    assert isinstance(raw.train, ImageFiles) and cache_files(cache) == []
    assert any("exceed the memory budget" in m for m in messages(caplog))
    # Within the budget (or in_memory=true, whatever the budget): in memory.
    assert isinstance(load(tmp_path / "data", "dataset.memory_budget_gb=1e-5").train, ImageTensors)
    assert isinstance(load(tmp_path / "data", "dataset.in_memory=true",
                           "dataset.memory_budget_gb=1e-6").train, ImageTensors)
    # DataLoader workers default to the cores this process may use (no oversubscription warning).
    data = build_data(dataset_config(tmp_path / "data", "dataset.in_memory=false"),
                      batch_size=4, device=CPU, seed=0)
    assert data.train.num_workers == available_cores()


@pytest.mark.parametrize("overrides, words", [
    (["dataset.in_memory=maybe"], "dataset.in_memory='maybe' is not allowed: auto, true, false"),
    (["dataset.memory_budget_gb=0"], "dataset.memory_budget_gb=0.0 is not allowed"),
    (["dataset.num_workers=-1"], "dataset.num_workers=-1 is not allowed"),
])
def test_cache_settings_are_checked_in_one_line(tmp_path, overrides, words):
    with pytest.raises(ConfigError) as error:
        dataset_config(tmp_path, *overrides)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_an_unwritable_cache_folder_is_one_line(tmp_path, monkeypatch):
    write_folder(tmp_path / "data")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("REGBENCH_CACHE", str(blocker / "cache"))
    with pytest.raises(ConfigError) as error:
        load(tmp_path / "data")
    message = str(error.value)
    assert message.startswith(f"cannot write the image cache {blocker / 'cache'}/imagefolder-")
    assert "set REGBENCH_CACHE to a writable folder" in message and "\n" not in message


def flip_a_stored_byte(path: Path) -> None:
    """The first byte of the file's first tensor inverted in place, as a failing disk would do:
    torch.load does not check the zip's CRCs, so only the cache's own digest can notice."""
    with zipfile.ZipFile(path) as archive:
        entry = next(info for info in archive.infolist() if "/data/" in info.filename)
    with path.open("r+b") as file:
        file.seek(entry.header_offset + 26)  # the local header's name and extra field lengths
        name_length, extra_length = struct.unpack("<HH", file.read(4))
        start = entry.header_offset + 30 + name_length + extra_length
        file.seek(start)
        byte = file.read(1)[0]
        file.seek(start)
        file.write(bytes([byte ^ 0xFF]))


def test_a_cache_file_whose_payload_changed_is_decoded_again_with_one_warning(tmp_path, cache, caplog):
    write_folder(tmp_path / "data")
    first = load(tmp_path / "data")
    # Copies: the loaded tensors map the file, and would see the byte flipped in place.
    train, test = first.train.images.clone(), first.test.images.clone()
    [name] = cache_files(cache)
    flip_a_stored_byte(cache / name)
    assert not torch.equal(first.train.images, train)  # the flip reached a pixel
    caplog.set_level(logging.INFO, logger="regbench")
    again = load(tmp_path / "data")
    # The damaged pixel is not used: the images are decoded again, and the file rewritten.
    assert torch.equal(again.train.images, train) and torch.equal(again.test.images, test)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"ignoring the image cache {cache / name}: its content does not match its "
                        f"checksum (a damaged file); decoding again"]
    assert any(m.startswith("imagefolder: decoded 12 images once into") for m in messages(caplog))
    caplog.clear()
    assert torch.equal(load(tmp_path / "data").train.images, train)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


class Planted:
    """What a pickle may hold beyond tensors: a call, run by a plain torch.load."""

    def __reduce__(self):
        return print, ("planted code ran",)


def test_a_cache_file_holding_more_than_tensors_is_refused_in_one_line_and_kept(tmp_path, cache,
                                                                                capsys):
    write_folder(tmp_path / "data")
    load(tmp_path / "data")
    [name] = cache_files(cache)
    torch.save({"train": Planted()}, cache / name)
    planted = (cache / name).read_bytes()
    with pytest.raises(ConfigError) as error:
        load(tmp_path / "data")
    message = str(error.value)
    assert message == (f"the image cache {cache / name} fails torch.load's weights_only check "
                       f"(Unsupported global: GLOBAL print was not an allowed global by "
                       f"default): damaged, or not written by regbench; delete it and rerun")
    assert (cache / name).read_bytes() == planted  # not regbench's file: neither run nor replaced
    assert "planted code ran" not in capsys.readouterr().out


@pytest.mark.slow
def test_the_cli_refuses_a_planted_cache_file_and_a_link_loop_in_one_line_each(tmp_path, cache):
    write_folder(tmp_path / "data")
    load(tmp_path / "data")
    [name] = cache_files(cache)
    torch.save({"train": Planted()}, cache / name)
    # The same absolute paths as load(): the cache key holds them.
    args = ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "trainer.epochs=1",
            "evaluation.figures=false", "trainer.progress=false", "trainer.num_threads=1"]
    result = run_cli([*args, "hydra.run.dir=run1"], cwd=tmp_path, env={"REGBENCH_CACHE": str(cache)})
    assert result.returncode == 2 and "planted code ran" not in result.stdout
    assert result.stderr.splitlines() == [
        f"regbench: error: the image cache {cache / name} fails torch.load's weights_only check "
        f"(Unsupported global: GLOBAL print was not an allowed global by default): damaged, or not "
        f"written by regbench; delete it and rerun"]
    (tmp_path / "data" / "train" / "cat" / "loop").symlink_to("../cat", target_is_directory=True)
    result = run_cli([*args, "hydra.run.dir=run2"], cwd=tmp_path, env={"REGBENCH_CACHE": str(cache)})
    assert result.returncode == 2
    folder = tmp_path / "data" / "train" / "cat"
    assert result.stderr.splitlines() == [
        f"regbench: error: dataset 'imagefolder': {folder / 'loop'} is a link to {folder}, a folder "
        f"it is in, so its images would be listed again at every depth; remove the link "
        f"(dataset.root={tmp_path / 'data'})"]


def test_a_full_disk_while_writing_the_cache_is_one_line_and_claims_nothing(tmp_path, cache, caplog,
                                                                            monkeypatch):
    write_folder(tmp_path / "data")

    def full_disk(content, file):
        file.write(b"PK\x03\x04 the first bytes")
        # What torch.save raises when a write fails (its C++ stream writer), not an OSError.
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0 "
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    caplog.set_level(logging.INFO, logger="regbench")
    with pytest.raises(ConfigError) as error:
        load(tmp_path / "data")
    message = str(error.value)
    assert message.startswith(f"cannot write the image cache {cache}/imagefolder-")
    assert "PytorchStreamWriter failed writing file data/0: file write failed" in message
    assert message.endswith("set REGBENCH_CACHE to a writable folder with space, or "
                            "dataset.in_memory=false") and "\n" not in message
    assert not any("later runs load it" in m for m in messages(caplog))
    # Neither a cache file nor the temporary one is left: only the lock file.
    assert [path.suffixes[-2:] for path in cache.iterdir()] == [[".pt", ".lock"]]


BUILD_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s", force=True)
from regbench.config import DatasetConfig
from regbench.datasets import DATASETS
raw = DATASETS.get("imagefolder")(DatasetConfig(name="imagefolder", root=sys.argv[1], val_size=0))
print("shape", tuple(raw.train.images.shape), flush=True)
"""


@pytest.mark.slow
def test_two_processes_building_at_once_make_one_valid_cache(tmp_path, cache, monkeypatch):
    """Both processes find no cache and wait on the lock (held here, as a first builder would);
    once it is free, one decodes and the other loads its file."""
    write_folder(tmp_path / "data", per_class=40)
    cfg = DatasetConfig(name="imagefolder", root=str(tmp_path / "data"), val_size=0)
    # The cache file's name: the one the loader computes (found by a dry run into another folder).
    probe = tmp_path / "probe"
    monkeypatch.setenv("REGBENCH_CACHE", str(probe))
    DATASETS.get("imagefolder")(cfg)
    monkeypatch.setenv("REGBENCH_CACHE", str(cache))
    [name] = cache_files(probe)
    cache.mkdir()
    lock = lock_file(cache / name)
    handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(handle, fcntl.LOCK_EX)
    logs = [tmp_path / f"job{index}.log" for index in range(2)]
    jobs = [subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(tmp_path / "data")],
                             stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp_path)
            for log in logs]
    try:
        deadline = time.monotonic() + 120
        while not all("waiting for another process" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            assert all(job.poll() is None for job in jobs), [log.read_text() for log in logs]
            time.sleep(0.2)
    finally:
        os.close(handle)  # release: the waiting processes go on
    outputs = []
    for job, log in zip(jobs, logs):
        assert job.wait(timeout=120) == 0, log.read_text()
        outputs.append(log.read_text())
    built = [output for output in outputs if "decoded 160 images once" in output]
    loaded = [output for output in outputs if "loaded 160 decoded images" in output]
    assert len(built) == 1 and len(loaded) == 1, outputs
    assert all("shape (80, 3, 12, 20)" in output for output in outputs)
    assert cache_files(cache) == [name]
    assert not [path for path in cache.iterdir() if path.name.endswith(".tmp")]
    valid = torch.load(cache / name, weights_only=True)
    reference = torch.load(probe / name, weights_only=True)
    assert torch.equal(valid["train"], reference["train"])
    assert torch.equal(valid["test"], reference["test"])


@pytest.mark.parametrize("size", [[], ["dataset.image_size=8"]], ids=["native", "image_size"])
def test_a_corrupt_image_is_named_at_decode_time_before_training(tmp_path, cache, size):
    """Native size: found while reading the headers; image_size set: while decoding."""
    paths = write_folder(tmp_path / "data", per_class=200)  # several chunks: the pool decodes it
    broken = paths[300]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    cfg = dataset_config(tmp_path / "data", *size)
    with pytest.raises(CorruptDatasetError) as error:
        build_data(cfg, batch_size=4, device=CPU, seed=0)  # before any model exists
    message = str(error.value)
    assert message.startswith(f"image {broken} cannot be decoded") and "\n" not in message
    assert cache_files(cache) == []  # nothing half-built is left for the next run


# --- sizes ---------------------------------------------------------------------------------------

def test_native_size_is_kept_when_every_image_shares_it(tmp_path, cache, caplog):
    write_folder(tmp_path / "data", sizes=((20, 12),))
    caplog.set_level(logging.INFO, logger="regbench")
    data = build_data(dataset_config(tmp_path / "data"), batch_size=4, device=CPU, seed=0)
    assert data.input_shape == (3, 12, 20)  # [C, H, W] of 20x12 (width x height) images
    images, _ = next(iter(data.train))
    assert images.shape == (4, 3, 12, 20)
    assert not any("differ in size" in m for m in messages(caplog))


def test_mixed_sizes_fall_back_to_256_stored_224_seen_with_one_log_line(tmp_path, cache, caplog):
    write_folder(tmp_path / "data", sizes=((40, 30), (30, 50)))
    caplog.set_level(logging.INFO, logger="regbench")
    data = build_data(dataset_config(tmp_path / "data"), batch_size=4, device=CPU, seed=0)
    notes = [m for m in messages(caplog) if "differ in size" in m]
    assert notes == [("imagefolder: images differ in size (2 sizes, e.g. 30x50 and 40x30): resized "
                      "(shorter side) and centre-cropped to 256, the model sees 224x224 crops "
                      "(random in training, the centre in evaluation); set dataset.image_size to "
                      "choose")]
    assert data.input_shape == (3, 224, 224)
    assert data.train.images.shape[1:] == (3, 256, 256)  # stored (CroppedBatches forwards)
    for batches in (data.train, data.test, data.train_eval):
        images, _ = next(iter(batches))
        assert images.shape[1:] == (3, 224, 224)
    # The second run, from the cache, says the same once.
    caplog.clear()
    build_data(dataset_config(tmp_path / "data"), batch_size=4, device=CPU, seed=0)
    assert len([m for m in messages(caplog) if "differ in size" in m]) == 1


# --- crops of the stored images ------------------------------------------------------------------

def numbered_images(count: int, size: int) -> torch.Tensor:
    """uint8 [count, 2, size, size] whose channel 0 is the row and channel 1 the column index."""
    rows = torch.arange(size).view(size, 1).expand(size, size)
    return torch.stack([rows, rows.T]).unsqueeze(0).repeat(count, 1, 1, 1).to(torch.uint8)


def test_training_crops_are_random_windows_and_evaluation_the_centre():
    images = numbered_images(64, 14)
    labels = torch.arange(64)
    torch.manual_seed(0)
    cropped = random_square_crops(images, 12)
    assert cropped.shape == (64, 2, 12, 12)
    tops, lefts = cropped[:, 0, 0, 0].long(), cropped[:, 1, 0, 0].long()
    for image, top, left in zip(cropped, tops, lefts):
        # A contiguous 12x12 window of the 14x14 image, at offsets 0..2.
        assert torch.equal(image, images[0, :, top:top + 12, left:left + 12])
    assert set(tops.tolist()) == {0, 1, 2} and set(lefts.tolist()) == {0, 1, 2}  # per image
    evaluation = CroppedBatches([(images, labels)], 12, random=False)
    [(centre, same_labels)] = list(evaluation)
    # (14 - 12) / 2 = 1 pixel off every side.
    assert torch.equal(centre, images[:, :, 1:13, 1:13]) and torch.equal(same_labels, labels)


def test_build_data_crops_training_at_random_and_evaluation_at_the_centre(tmp_path, cache):
    # Noise images: every crop offset gives different pixels.
    for split in ("train", "test"):
        for name in COLOURS:
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for number in range(4):
                Image.effect_noise((14, 14), 80).convert("RGB").save(
                    tmp_path / "data" / split / name / f"{number}.png")
    cfg = dataset_config(tmp_path / "data", "dataset.image_size=12")  # stored at 14
    data = build_data(cfg, batch_size=8, device=CPU, seed=0)
    assert data.input_shape == (3, 12, 12)
    stored = data.test.images  # TensorBatches' tensor, through CroppedBatches
    assert stored.shape == (8, 3, 14, 14)
    [(test_images, _)] = list(data.test)
    assert torch.equal(test_images, stored[:, :, 1:13, 1:13])
    [(train_images, _)] = list(data.train_eval)
    assert torch.equal(train_images, data.train_eval.images[:, :, 1:13, 1:13])
    torch.manual_seed(0)
    [(shuffled, _labels)] = list(data.train)
    centres = {tuple(image.flatten().tolist()) for image in train_images}
    # Random offsets (0..2 each way, 9 choices per image): not all 8 crops are the centre.
    assert sum(tuple(image.flatten().tolist()) in centres for image in shuffled) < 8
