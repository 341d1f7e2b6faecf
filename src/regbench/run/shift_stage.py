"""evaluation.shift: the trained model on its test split under corruption (Ovadia et al. 2019's
question: does calibration hold as the shift grows?), measured in ``Run.test`` after the clean
test metrics and the calibrators.

- ``standard``: every test image under each corruption of evaluation/shift.py at each severity of
  ``evaluation.shift_severities``, made on the run's device from whole uint8 chunks of the test
  split (``CHUNK_VALUES``), whatever holds it (in-memory tensors or a file-based DataLoader: one
  pass over it). Each (corruption, severity) draws from its own ``torch.Generator`` seeded from
  (run seed, corruption, severity): a run gives the same images every time, runs of the same
  seed (the pairs the report compares) see the same images, and measuring fewer corruptions
  leaves each one's images as they were.
- ``published``: CIFAR-10-C, CIFAR-100-C or MNIST-C read from ``dataset.root``
  (datasets/corrupted.py). MNIST-C publishes each corruption at one level, keyed severity 0
  (``shift/<corruption>/s0/acc``): no per-severity mean (``shift/acc@s<k>``) holds it, the means
  over everything (``shift/acc``) do; ``evaluation.shift_severities`` does not apply to it.

metrics.json keys: per set ``shift/<corruption>/s<k>/<metric>`` for ``SET_METRICS``; per severity
``shift/acc@s<k>`` and ``shift/ece@s<k>`` (means over the corruptions); ``shift/<metric>`` (means
over every set); ``shift/seconds`` (the stage's time). ``ece@temperature`` is the ECE after the
temperature fitted on the clean validation split (the calibration panel's, or fitted here the
same way when ``evaluation.calibrators`` leaves it out); a run without a validation split has none.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from regbench.config import Config, ShiftMode, check
from regbench.datasets.corrupted import MNIST_C_SEVERITY, RELEASES, PublishedSets, published_sets
from regbench.evaluation.calibration_errors import calibration_errors
from regbench.evaluation.calibrators import fit_temperature
from regbench.evaluation.metrics import classification_metrics, to_floats
from regbench.evaluation.shift import (
    CORRUPTIONS,
    MIN_SIDE,
    RGB_ONLY,
    SEVERITIES,
    corrupt,
    standard_suite,
)
from regbench.run.spec import corruption_key, severity_key

if TYPE_CHECKING:
    from regbench.run.engine import Run

log = logging.getLogger(__name__)

PREFIX = "shift"
# Measured on every (corruption, severity): metrics.py's and, after the temperature,
# calibration_errors.py's.
SET_METRICS = ("acc", "ece", "nll", "brier", "mean_confidence", "ece@temperature")
# Averaged per severity over the corruptions (issue #23's names), and drawn in TensorBoard.
SEVERITY_METRICS = ("acc", "ece")
SECONDS_KEY = f"{PREFIX}/seconds"
# TensorBoard: the per-severity means as curves whose step is the severity.
TENSORBOARD_TAG = "shift_by_severity"
# The calibration panel's fitted temperature (calibrators.fit_temperature_scaling's scalar).
TEMPERATURE = "temperature"
# Pixel values corrupted at once: a chunk of images as float32 is 64 MiB, and the corruptions hold
# a few such copies (elastic_transform's grids, zoom_blur's sum). A whole digits or MNIST test split,
# 5,461 CIFAR images, 111 at 224x224.
CHUNK_VALUES = 2 ** 24

ShiftSet = tuple[str, int]  # (corruption, severity)
Outputs = dict[ShiftSet, tuple[torch.Tensor, torch.Tensor]]  # logits [N, K], labels [N]


def mean_key(metric: str) -> str:
    """``shift/nll``: ``metric`` averaged over every (corruption, severity) measured."""
    return f"{PREFIX}/{metric}"


# --- refusals before training ------------------------------------------------------------------

def check_shift_settings(settings: Config) -> None:
    """Before the data is loaded: evaluation.shift=published on a dataset without published files,
    files missing or malformed (one line naming the folder), corruptions the release lacks."""
    if settings.evaluation.shift == ShiftMode.published:
        published_shift_sets(settings)


def check_shift_images(settings: Config, input_shape: Sequence[int]) -> None:
    """Once the images' shape is known: evaluation.shift=standard on images the corruptions cannot
    take, an unknown corruption, saturate on gray images."""
    if settings.evaluation.shift == ShiftMode.standard:
        standard_corruptions(settings, input_shape)


def standard_corruptions(settings: Config, input_shape: Sequence[int]) -> tuple[str, ...]:
    """evaluation.shift_corruptions, checked against the images; null: the standard suite."""
    channels, height, width = input_shape
    name = settings.dataset.name
    check(channels in (1, 3), "evaluation.shift", "standard",
          f"a dataset of gray (1 channel) or RGB (3 channels) images; {name}'s have {channels}")
    check(min(height, width) >= MIN_SIDE, "evaluation.shift", "standard",
          f"images of {MIN_SIDE}x{MIN_SIDE} pixels or more; {name}'s are {height}x{width}")
    suite = standard_suite(channels)
    chosen = settings.evaluation.shift_corruptions
    if chosen is None:
        return suite
    for corruption in chosen:
        check(corruption in CORRUPTIONS, "evaluation.shift_corruptions", list(chosen),
              f"names from {', '.join(CORRUPTIONS)} ({corruption!r} is none of them)")
        check(corruption in suite, "evaluation.shift_corruptions", list(chosen),
              f"corruptions of gray images: {', '.join(RGB_ONLY)} changes colour saturation and "
              f"{name}'s images are gray (1 channel)")
    return tuple(chosen)


def published_shift_sets(settings: Config) -> PublishedSets:
    """The published sets that evaluation.shift_corruptions and shift_severities select (MNIST-C's
    one level always), memory-mapped; refusals in one line."""
    dataset, evaluation = settings.dataset, settings.evaluation
    check(dataset.name in RELEASES, "evaluation.shift", "published",
          f"a dataset with published corrupted test files ({', '.join(RELEASES)}); "
          f"{dataset.name} has none: use evaluation.shift=standard")
    # The files hold every class with the release's labels; standard corrupts the classes trained.
    check(dataset.classes is None, "evaluation.shift", "published",
          "only with every class (dataset.classes=null); use evaluation.shift=standard")
    sets = published_sets(Path(dataset.root), dataset.name)
    release = RELEASES[dataset.name].corruptions
    chosen = evaluation.shift_corruptions or release
    unknown = [corruption for corruption in chosen if corruption not in release]
    check(not unknown, "evaluation.shift_corruptions", list(chosen),
          f"corruptions published for {dataset.name}: {', '.join(release)} "
          f"({', '.join(map(repr, unknown))} not among them)")
    severities = {*evaluation.shift_severities, MNIST_C_SEVERITY}
    return {key: value for key, value in sets.items()
            if key[0] in chosen and key[1] in severities}


# --- the stage -----------------------------------------------------------------------------------

def shift_metrics(run: Run, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The shift/ keys of a trained run (see the module's docstring), with one log line of what
    they cost; {} when evaluation.shift is null. ``metrics``: the test phase's so far."""
    if run.settings.evaluation.shift is None:
        return {}
    started = time.perf_counter()
    temperature = validation_temperature(run, metrics)
    published = run.settings.evaluation.shift == ShiftMode.published
    outputs = published_outputs(run) if published else generated_outputs(run)
    found: dict[str, float] = {}
    for (corruption, severity), (logits, labels) in outputs.items():
        found.update(set_metrics(logits, labels, temperature, corruption, severity))
    found.update(summary_metrics(found, list(outputs)))
    found[SECONDS_KEY] = time.perf_counter() - started
    log_cost(run, outputs, found[SECONDS_KEY])
    return found


def validation_temperature(run: Run, metrics: Mapping[str, Any]) -> Optional[float]:
    """The temperature fitted on the clean validation split: the calibration panel's, else fitted
    here by the same function; None without a validation split."""
    if TEMPERATURE in metrics:
        return metrics[TEMPERATURE]
    if len(run.data.val) == 0:
        return None
    val = run.evaluate(run.data.val)
    return fit_temperature(val.logits, val.labels)


def set_generator(seed: int, corruption: str, severity: int, device: torch.device) -> torch.Generator:
    """The draws of one (corruption, severity): numpy's SeedSequence mixes the run seed, the
    corruption's name and the severity into a seed of its own."""
    entropy = [seed, zlib.crc32(corruption.encode()), severity]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def chunk_size(input_shape: Sequence[int]) -> int:
    return max(1, CHUNK_VALUES // math.prod(input_shape))


def chunks(batches: Iterable, size: int, device: torch.device) -> Iterator[tuple[torch.Tensor,
                                                                                  torch.Tensor]]:
    """A split's (images, labels) batches regrouped into chunks of ``size`` examples on the
    device (the last one smaller): what a chunk holds depends on the split and ``size`` only,
    not on the batch size."""
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    held = 0
    for batch_images, batch_labels in batches:
        images.append(batch_images.to(device))
        labels.append(batch_labels.to(device))
        held += len(batch_labels)
        while held >= size:
            all_images, all_labels = torch.cat(images), torch.cat(labels)
            yield all_images[:size], all_labels[:size]
            images, labels, held = [all_images[size:]], [all_labels[size:]], held - size
    if held:
        yield torch.cat(images), torch.cat(labels)


def predict(run: Run, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model's logits for a chunk, in the run's batches (run.evaluate: eval mode,
    normalization, autocast)."""
    size = run.settings.trainer.batch_size
    return run.evaluate(zip(images.split(size), labels.split(size))).logits


def generated_outputs(run: Run) -> Outputs:
    """Logits and labels of the test split under every (corruption, severity), one pass over it."""
    settings = run.settings
    sets = [(corruption, severity)
            for corruption in standard_corruptions(settings, run.data.input_shape)
            for severity in settings.evaluation.shift_severities]
    generators = {key: set_generator(settings.seed, *key, run.device) for key in sets}
    logits: dict[ShiftSet, list[torch.Tensor]] = {key: [] for key in sets}
    labels = []
    for images, chunk_labels in chunks(run.data.test, chunk_size(run.data.input_shape), run.device):
        labels.append(chunk_labels)
        for key in sets:
            logits[key].append(predict(run, corrupt(images, *key, generators[key]), chunk_labels))
        run.check_stop()
    all_labels = torch.cat(labels)
    return {key: (torch.cat(parts), all_labels) for key, parts in logits.items()}


def published_outputs(run: Run) -> Outputs:
    """Logits and labels of every published set selected, read chunk by chunk from its file."""
    size = chunk_size(run.data.input_shape)
    outputs: Outputs = {}
    for key, (images, labels) in published_shift_sets(run.settings).items():
        labels = labels.to(run.device)
        parts = [predict(run, images[start:start + size].to(run.device), labels[start:start + size])
                 for start in range(0, len(labels), size)]
        outputs[key] = (torch.cat(parts), labels)
        run.check_stop()
    return outputs


def set_metrics(logits: torch.Tensor, labels: torch.Tensor, temperature: Optional[float],
                corruption: str, severity: int) -> dict[str, float]:
    """SET_METRICS of one corrupted set, keyed shift/<corruption>/s<k>/<metric>, in one transfer
    to the host."""
    found = classification_metrics(logits, labels)
    values = {metric: found[metric] for metric in SET_METRICS if metric in found}
    if temperature is not None:
        calibrated = (logits.float() / temperature).softmax(dim=1)
        values["ece@temperature"] = calibration_errors(calibrated, labels)[0]
    keys = [corruption_key(corruption, severity, metric) for metric in values]
    return dict(zip(keys, to_floats(values, PREFIX).values()))


def summary_metrics(found: Mapping[str, float], sets: Sequence[ShiftSet]) -> dict[str, float]:
    """Means over every set (shift/<metric>) and per severity 1-5 over the corruptions
    (shift/acc@s<k>, shift/ece@s<k>)."""
    summary: dict[str, float] = {}
    for metric in SET_METRICS:
        values = [found[key] for key in (corruption_key(*shift_set, metric) for shift_set in sets)
                  if key in found]
        if values:
            summary[mean_key(metric)] = statistics.fmean(values)
    for severity in SEVERITIES:
        corruptions = [corruption for corruption, level in sets if level == severity]
        for metric in SEVERITY_METRICS if corruptions else ():
            summary[severity_key(metric, severity)] = statistics.fmean(
                found[corruption_key(corruption, severity, metric)] for corruption in corruptions)
    return summary


def severity_curves(metrics: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """{metric: {severity: value}} of the per-severity means in ``metrics``, for TensorBoard;
    {} for a run without them."""
    curves = {metric: {severity: metrics[severity_key(metric, severity)] for severity in SEVERITIES
                       if severity_key(metric, severity) in metrics}
              for metric in SEVERITY_METRICS}
    return {metric: values for metric, values in curves.items() if values}


def log_cost(run: Run, outputs: Outputs, seconds: float) -> None:
    """One line: what was measured, how long it took, and its share of the training time."""
    corruptions = len({corruption for corruption, _ in outputs})
    severities = len({severity for _, severity in outputs})
    examples = len(next(iter(outputs.values()))[1]) if outputs else 0
    training = sum(record["seconds"] for record in run.history)
    share = f" ({100 * seconds / training:.0f} % of training's {training:.1f} s)" if training else ""
    log.info("shift (%s): %d corruptions x %d severit%s on %d test images in %.1f s%s",
             run.settings.evaluation.shift.value, corruptions, severities,
             "y" if severities == 1 else "ies", examples, seconds, share)
