"""evaluation.ood in a run: out-of-distribution (OOD) sets, checked and loaded before training,
scored against the test split after it.

Each entry of ``evaluation.ood`` is one OOD set, named in the metric keys ``ood/<set>/...``:

- ``held_out_classes``: the test images of the classes ``dataset.classes`` leaves out (never seen
  in training, validation or the test split; datasets/base.py ``keep_classes``).
- ``gaussian``, ``uniform``, ``rademacher``, ``blobs``: Outlier Exposure's synthetic sets
  (datasets/synthetic_ood.py), as many images as the test split, in the model's input shape,
  drawn from the run's seed (the same images whichever other sets are listed).
- a registered dataset name (``fashion_mnist``, ``cifar100``, ``svhn``, ...): its test split,
  loaded with the run's ``dataset.root`` and ``dataset.download``.
- ``folder:<path>``: every image file under ``<path>`` (subfolders included, folder links not
  followed), decoded as imagefolder's images are; its set name is ``folder_<last path component>``
  with every character other than letters, digits and ``_`` replaced by ``_``.

Dataset and folder images are converted to the model's channels (RGB to gray with torchvision's
ITU-R 601-2 luma weights, rounded; gray to RGB by copying the channel) and size (torchvision's antialiased
bilinear resize on uint8), then go through ``Run.prepare`` like the test images: normalized with
the in-distribution mean and std. Loading happens in ``OodSets.build``, called by ``Run.build``, so
an unknown name or a missing dataset (the dataset's own one line: the folder, how to get it) is
refused before training; evaluation happens once, in ``Run.test``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from regbench.config import Config, ConfigError, Corruption, check
from regbench.datasets.base import (
    DATASETS,
    DataBundle,
    ImageTensors,
    Split,
    TensorBatches,
    make_batches,
)
from regbench.datasets.crops import crop_batches
from regbench.datasets.synthetic_ood import SYNTHETIC_OOD_SETS, synthetic_ood_images
from regbench.evaluation.ood import SCORES, mean_over_sets, ood_metrics
from regbench.machine import available_cores

if TYPE_CHECKING:
    from regbench.run.engine import Evaluation, Run
    from regbench.run.recorder import RunRecorder

log = logging.getLogger(__name__)

HELD_OUT_CLASSES = "held_out_classes"
FOLDER_PREFIX = "folder:"
FOLDER_SET_PREFIX = "folder_"
OOD_SECONDS = "ood/seconds"
# Dataset names that are not a fixed dataset: imagefolder reads dataset.root itself, which is the
# in-distribution folder (folder:<path> names another).
NOT_OOD_DATASETS = ("imagefolder",)
# Images converted to the model's shape at a time: bounds the resize's float temporaries.
CONVERT_BATCH = 1024
Shape = tuple[int, int, int]


def allowed_entries(settings: Config) -> str:
    datasets = [name for name in sorted(DATASETS.names())
                if name != settings.dataset.name and name not in NOT_OOD_DATASETS]
    return (f"{HELD_OUT_CLASSES}, {', '.join(SYNTHETIC_OOD_SETS)}, a dataset "
            f"({', '.join(datasets)}) or {FOLDER_PREFIX}<path to a folder of images>")


def folder_set_name(path: str) -> str:
    """``folder:<path>``'s set name: ``folder_`` and the last path component, key-safe."""
    last = Path(path).name or Path(path).resolve().name
    return FOLDER_SET_PREFIX + (re.sub(r"[^A-Za-z0-9_]", "_", last) or "root")


def set_name(entry: str) -> str:
    return folder_set_name(entry[len(FOLDER_PREFIX):]) if entry.startswith(FOLDER_PREFIX) else entry


def check_entry(entry: str, settings: Config, data: DataBundle) -> None:
    """One evaluation.ood entry: a known kind, and what that kind needs."""
    known = (entry == HELD_OUT_CLASSES or entry in SYNTHETIC_OOD_SETS
             or entry.startswith(FOLDER_PREFIX)
             or (entry in DATASETS.names() and entry not in NOT_OOD_DATASETS))
    check(known, "evaluation.ood", entry, allowed_entries(settings))
    check(entry != settings.dataset.name, "evaluation.ood", entry,
          f"another dataset than the one trained on ({settings.dataset.name}'s own test split is "
          f"in-distribution; {HELD_OUT_CLASSES} with dataset.classes holds some of its classes out)")
    if entry == HELD_OUT_CLASSES:
        check(data.held_out is not None, "evaluation.ood", entry,
              "with dataset.classes, the classes to train on (e.g. dataset.classes=[0,1,2,3,4]): "
              "the test images of the other classes are the OOD set")
        check(len(data.held_out) > 0, "evaluation.ood", entry,
              f"with dataset.classes leaving out a class that has test images (dataset.classes="
              f"{list(settings.dataset.classes)} leaves none)")
        check(settings.dataset.corruption != Corruption.shuffled_pixels, "evaluation.ood", entry,
              "without dataset.corruption=shuffled_pixels (its permutation is not applied to the "
              "held-out images)")
    if entry.startswith(FOLDER_PREFIX):
        path = entry[len(FOLDER_PREFIX):]
        check(bool(path) and Path(path).is_dir(), "evaluation.ood", entry,
              f"{FOLDER_PREFIX}<path> naming a folder of images ({path or 'no path'} is not a folder)")


def check_entries(settings: Config, data: DataBundle) -> None:
    """Every entry known and usable, and every set name once (it is one level of the keys)."""
    entries = list(settings.evaluation.ood)
    for entry in entries:
        check_entry(entry, settings, data)
    names = [set_name(entry) for entry in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    check(not repeated, "evaluation.ood", entries,
          f"each OOD set once (named twice: {', '.join(repeated)}; two folders with the same last "
          f"path component share a set name)")


def to_model_shape(images: torch.Tensor, shape: Shape) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, *shape]: channels converted (RGB <-> gray), then resized."""
    from torchvision.transforms.v2 import functional as TF  # DEVELOPERS.md, "Start-up"

    channels, height, width = shape
    if images.shape[1] != channels:
        if (images.shape[1], channels) == (3, 1):
            # In float, rounded: on uint8 torchvision truncates, and as its weights sum to 0.9999
            # a gray pixel 77 decoded as RGB would become 76.
            images = TF.rgb_to_grayscale(images.float()).round_().to(torch.uint8)
        elif (images.shape[1], channels) == (1, 3):
            images = images.expand(-1, 3, -1, -1)
        else:
            raise ConfigError(f"evaluation.ood: images of {images.shape[1]} channels cannot be "
                              f"converted to the model's {channels}")
    if tuple(images.shape[2:]) != (height, width):
        images = TF.resize(images, [height, width], antialias=True)
    return images.contiguous()


def split_images(split: Split, crop_size: Optional[int], shape: Shape, workers: int) -> torch.Tensor:
    """A whole split (in memory or decoded by DataLoader workers) in the model's shape, centre
    cropped first where the dataset stores larger images (as its evaluation batches are)."""
    batches = make_batches(split, CONVERT_BATCH, False, torch.device("cpu"), 0, workers)
    converted = [to_model_shape(images, shape)
                 for images, _ in crop_batches(batches, crop_size, random=False)]
    return torch.cat(converted) if converted else torch.empty((0, *shape), dtype=torch.uint8)


def dataset_images(name: str, settings: Config, shape: Shape) -> torch.Tensor:
    """The test split of dataset ``name``, from the run's dataset.root, in the model's shape. A
    file-based dataset is decoded at the model's size when the model's input is square."""
    _, height, width = shape
    cfg = dataclasses.replace(settings.dataset, name=name, train_size=None, val_size=None,
                              classes=None, corruption=Corruption.none, label_noise=None,
                              image_size=height if height == width else None)
    try:
        raw = DATASETS.get(name)(cfg)
    except ConfigError as error:
        raise type(error)(f"evaluation.ood={name}: {error}") from None
    workers = available_cores() if cfg.num_workers is None else cfg.num_workers
    return split_images(raw.test, raw.crop_size, shape, workers)


@dataclass(frozen=True)
class ModelSizedImage:
    """One image file -> uint8 in the model's shape; picklable, for the decoding processes."""

    shape: Shape

    def __call__(self, path: str) -> torch.Tensor:
        from regbench.datasets.imagefolder import ImageDecoder

        return to_model_shape(ImageDecoder(None)(path)[None], self.shape)[0]


def image_paths(folder: Path) -> list[str]:
    """Every image file under ``folder`` (torchvision's IMG_EXTENSIONS), sorted."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    return sorted(os.path.join(walked, name) for walked, _, names in os.walk(folder)
                  for name in names if has_file_allowed_extension(name, IMG_EXTENSIONS))


def folder_images(entry: str, shape: Shape) -> torch.Tensor:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from regbench.datasets.cache import decode_all

    folder = Path(entry[len(FOLDER_PREFIX):])
    paths = image_paths(folder)
    check(bool(paths), "evaluation.ood", entry,
          f"a folder holding images ({folder} has no file ending in {', '.join(IMG_EXTENSIONS)})")
    return decode_all(ModelSizedImage(shape), paths, shape, f"{set_name(entry)}: decoding")


@dataclass
class OodSets:
    """A run's OOD sets: the loaded ones (datasets, folders) as uint8 images in the model's shape;
    the held-out classes and the synthetic sets are taken or drawn when evaluated."""

    entries: list[str] = field(default_factory=list)
    loaded: dict[str, torch.Tensor] = field(default_factory=dict)
    load_seconds: float = 0.0

    @classmethod
    def build(cls, settings: Config, data: DataBundle) -> "OodSets":
        """Check evaluation.ood and load its datasets and folders (before training)."""
        started = time.perf_counter()
        check_entries(settings, data)
        loaded = {}
        for entry in settings.evaluation.ood:
            if entry.startswith(FOLDER_PREFIX):
                loaded[set_name(entry)] = folder_images(entry, data.input_shape)
            elif entry in DATASETS.names():
                loaded[entry] = dataset_images(entry, settings, data.input_shape)
        return cls(list(settings.evaluation.ood), loaded, time.perf_counter() - started)

    def set_logits(self, run: Run, name: str, test_size: int) -> torch.Tensor:
        """The model's logits of one set (eval mode, batched, run.prepare and run.autocast)."""
        if name == HELD_OUT_CLASSES:
            return run.evaluate(run.data.held_out).logits
        if name in SYNTHETIC_OOD_SETS:
            images = synthetic_ood_images(name, test_size, run.data.input_shape, run.settings.seed)
        else:
            images = self.loaded[name]
        labels = torch.zeros(len(images), dtype=torch.int64)  # unused: OOD images have no class
        batches = TensorBatches(ImageTensors(images, labels), run.settings.trainer.batch_size,
                                shuffle=False, drop_last=False, device=run.device)
        return run.evaluate(batches).logits

    def evaluate(self, run: Run, test: Evaluation, recorder: Optional[RunRecorder]
                 ) -> dict[str, Any]:
        """ood/<set>/<metric>_<score> per set, their means over sets, ood/seconds; the scores in
        test_ood.npz and as TensorBoard histograms (in vs out) when there is a recorder."""
        if not self.entries:
            return {}
        started = time.perf_counter()
        names = [set_name(entry) for entry in self.entries]
        metrics: dict[str, Any] = {}
        scores = {"in": score_arrays(test.logits)}
        sizes = {}
        for name in names:
            logits = self.set_logits(run, name, len(test))
            metrics.update(ood_metrics(test.logits, logits, name))
            scores[name] = score_arrays(logits)
            sizes[name] = len(logits)
        metrics.update(mean_over_sets(metrics, names))
        if recorder is not None:
            recorder.write_ood_scores({f"{name}_{score}": values for name, by_score in scores.items()
                                       for score, values in by_score.items()})
            recorder.log_ood_histograms(scores, run.epochs_done)
        metrics[OOD_SECONDS] = self.load_seconds + time.perf_counter() - started
        log_cost(sizes, len(test), metrics[OOD_SECONDS], run.history)
        return metrics


def score_arrays(logits: torch.Tensor) -> dict[str, np.ndarray]:
    """Every OOD score of ``logits`` (higher: more in-distribution), as float32 arrays."""
    return {name: score(logits).float().cpu().numpy() for name, score in SCORES.items()}


def log_cost(sizes: dict[str, int], test_size: int, seconds: float,
             history: list[dict[str, Any]]) -> None:
    """One line: the sets, their sizes, and what they cost against the training time."""
    training = sum(record["seconds"] for record in history)
    share = f"{100 * seconds / training:.0f} % of the {training:.1f} s of training" if training \
        else "no training time recorded"
    sets = ", ".join(f"{name} ({count} images)" for name, count in sizes.items())
    log.info("ood: %s against %d test images in %.2f s (%s)", sets, test_size, seconds, share)
