"""The configuration schema: structured configs registered in Hydra's ConfigStore.

The YAML files in ``configs/`` are presets on top of these dataclasses, so a misspelled key or a
value of the wrong type is refused by Hydra while the config is composed, before any training.
Range checks that a type cannot express live in ``__post_init__`` and run when the composed
config is turned into objects (``OmegaConf.to_object``) at the start of a run.

Model, regularizer and optimizer schemas are registered under ``schema/<group>/<name>`` by the
modules that define them (``models/``, ``regularizers/``, ``optim.py``); their YAML options pull them
in with ``- /schema/<group>/<name>@_here_``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from regbench.config.errors import ConfigError, check  # noqa: F401  (ConfigError: re-exported)

# float32's largest value: parameters are float32, so a larger learning rate overflows the update.
FLOAT32_MAX = 3.4028234663852886e38


def is_finite_positive(value: float) -> bool:
    return math.isfinite(value) and 0 < value < FLOAT32_MAX


# Largest values that still describe a run a person would start (beyond them: a typo).
MAX_EPOCHS = 1_000_000
SEED_RANGE = 2 ** 32  # numpy's seeds are 32-bit unsigned integers


class Corruption(str, Enum):
    """Zhang et al. 2017's randomization tests (§2, Fig. 1); datasets/base.py applies them."""

    none = "none"
    random_labels = "random_labels"  # a fraction label_noise (default all) of the training labels
    shuffled_pixels = "shuffled_pixels"  # one fixed permutation of pixel positions, every split
    random_pixels = "random_pixels"  # a different permutation per training image
    gaussian = "gaussian"  # training images replaced by Gaussian noise with the data's mean/std


# The corruptions that change only labels (so dataset.label_noise applies to them).
LABEL_CORRUPTIONS = (Corruption.none, Corruption.random_labels)


IN_MEMORY_CHOICES = ("auto", "true", "false")


@dataclass
class DatasetConfig:
    name: str = MISSING
    # Where datasets live; REGBENCH_DATA lets a user keep one copy for all projects.
    root: str = "${oc.env:REGBENCH_DATA,data}"
    # Fetch missing files with torchvision's downloaders (needs internet).
    download: bool = True
    # Use only the first N training examples after a fixed shuffle (None: all of them).
    train_size: Optional[int] = None
    # Examples held out of the training split for model selection; the test split is used once.
    # null: 10 % of the training split, at most 5,000 (datasets/base.py default_val_size).
    val_size: Optional[int] = None
    # The shuffle that picks validation and train_size examples; fixed so every seed sees the
    # same split and runs differ only in initialization and data order.
    split_seed: int = 0
    # Per-channel normalization of [0, 1] pixels (the dataset's training-set statistics).
    mean: List[float] = field(default_factory=lambda: [0.5])
    std: List[float] = field(default_factory=lambda: [0.5])
    # File-based datasets (pets, imagefolder): the square size the model sees. Images are stored
    # 8/7 larger (torchvision's resize 256 -> crop 224) for random training crops and centre
    # evaluation crops; null (imagefolder): the native size when every image shares it, else 224.
    image_size: Optional[int] = None
    # File-based datasets: decode every image once into a cache file and train from memory.
    # auto: when the decoded images fit dataset.memory_budget_gb; true: always; false: decode in
    # DataLoader workers every epoch (datasets/cache.py).
    in_memory: str = "auto"
    # Decoded uint8 bytes that in_memory=auto keeps in memory; null: a quarter of physical RAM.
    memory_budget_gb: Optional[float] = None
    # DataLoader workers decoding file-based datasets that are not in memory; null: one per core
    # this process may use (os.sched_getaffinity), so DataLoader never warns of oversubscription.
    num_workers: Optional[int] = None
    # Zhang et al. 2017's randomization tests, fixed by the run's seed; validation and test stay
    # clean except for shuffled_pixels (the same permutation everywhere).
    corruption: Corruption = Corruption.none
    # random_labels: this fraction of the training labels is replaced by a uniformly random class
    # (possibly the true one); never val or test. null: 1.0 with corruption=random_labels (Zhang's
    # "random labels"), 0 otherwise; a value with corruption=none means random_labels at that
    # fraction (Zhang's partially corrupted labels, Fig. 1c).
    label_noise: Optional[float] = None
    # Train, validate and test on these class indices only, renumbered 0..k-1 in the order listed;
    # the other classes' test images stay aside for evaluation.ood=[held_out_classes] (classes
    # never seen in training). null: every class. Indices unknown to the dataset are refused when
    # it is loaded (datasets/base.py keep_classes).
    classes: Optional[List[int]] = None
    # The out-of-distribution sets usual for this dataset, which suite=shift_ood evaluates
    # (configs/suite/shift_ood.yaml): another dataset where the literature uses one (MNIST <->
    # Fashion-MNIST, CIFAR-10/100 and SVHN), plus Outlier Exposure's synthetic sets (Hendrycks et al.
    # 2019), which need no download.
    ood_sets: List[str] = field(default_factory=lambda: ["gaussian", "uniform", "rademacher", "blobs"])

    def __post_init__(self) -> None:
        if self.train_size is not None:
            check(self.train_size >= 1, "dataset.train_size", self.train_size, "an integer >= 1")
        check(self.val_size is None or self.val_size >= 0, "dataset.val_size", self.val_size,
              "an integer >= 0, or null for 10 % of the training split (at most 5,000)")
        check(len(self.mean) == len(self.std), "dataset.std", self.std,
              f"one value per channel, like dataset.mean={self.mean}")
        check(all(s > 0 for s in self.std), "dataset.std", self.std, "values > 0")
        check(self.num_workers is None or self.num_workers >= 0, "dataset.num_workers",
              self.num_workers, "an integer >= 0, or null for one per available core")
        check(self.image_size is None or self.image_size >= 1, "dataset.image_size",
              self.image_size, "an integer >= 1 (the square size the model sees), or null")
        # OmegaConf turns a YAML or command-line true/false into the string 'True'/'False'.
        self.in_memory = str(self.in_memory).lower()
        check(self.in_memory in IN_MEMORY_CHOICES, "dataset.in_memory", self.in_memory,
              ", ".join(IN_MEMORY_CHOICES))
        check(self.memory_budget_gb is None or is_finite_positive(self.memory_budget_gb),
              "dataset.memory_budget_gb", self.memory_budget_gb,
              "a number of gigabytes > 0, or null for a quarter of physical RAM")
        if self.label_noise is not None:
            check(0.0 <= self.label_noise <= 1.0, "dataset.label_noise", self.label_noise,
                  "a fraction in [0, 1]")
            check(self.label_noise == 0 or self.corruption in LABEL_CORRUPTIONS,
                  "dataset.label_noise", self.label_noise,
                  f"only with dataset.corruption=none or random_labels (not "
                  f"{self.corruption.value}, which corrupts the images)")
        if self.classes is not None:
            self.check_classes()

    def check_classes(self) -> None:
        """dataset.classes: two classes at least, each once, none negative."""
        classes = list(self.classes)
        repeated = sorted({index for index in classes if classes.count(index) > 1})
        check(not repeated, "dataset.classes", classes,
              f"each class once (repeated: {', '.join(map(str, repeated))})")
        check(len(classes) >= 2, "dataset.classes", classes,
              "2 class indices or more (a classifier needs two classes), or null for all")
        check(min(classes) >= 0, "dataset.classes", classes, "class indices >= 0")

    @property
    def label_noise_fraction(self) -> float:
        """The share of training labels to randomize, from corruption and label_noise."""
        if self.corruption == Corruption.random_labels:
            return 1.0 if self.label_noise is None else self.label_noise
        if self.corruption == Corruption.none and self.label_noise is not None:
            return self.label_noise
        return 0.0


@dataclass
class ModelConfig:
    """Common part of every model schema; each model module extends it."""

    name: str = MISSING


class KeepCheckpoint(str, Enum):
    """trainer.keep_checkpoint: which weights a completed run keeps (train.keep_checkpoints)."""

    last = "last"
    none = "none"
    best = "best"


@dataclass
class TrainerConfig:
    epochs: int = 30
    batch_size: int = 64
    # auto: CUDA when available, else CPU; or an explicit torch device string.
    device: str = "auto"
    # Deterministic algorithms (slower on CUDA; CPU runs are reproducible either way).
    deterministic: bool = False
    # Mixed precision. null: on CUDA (bf16 where supported, else fp16 with a grad scaler); on a
    # CPU with native bf16 (AVX512-BF16/AMX) bf16 autocast for mlp, lenet, convnet and resnet,
    # whose accuracy and ECE it was shown to keep (machine.CPU_BF16_DEFAULT_MODELS), fp32 for the
    # others and on other CPUs. true: bf16 also for every model on such a CPU. false: fp32
    # everywhere. metrics.json's "precision" says what a run trained in.
    amp: Optional[bool] = None
    # Progress bar: null = on when stderr is a terminal and the run is not part of a multirun.
    progress: Optional[bool] = None
    # CPU threads for this process; 0 = the cores not busy with other work when the run starts
    # (machine.free_cores: all of them on an idle machine, 1 on a busy one); in a sweep the
    # default launcher sets each job's share (sweep_plan.py).
    num_threads: int = 0
    # torch.compile the model (opt-in: compilation costs more than it saves on short runs).
    compile: bool = False
    # Write last.pt (needed to resume) ...
    checkpoint: bool = True
    # ... when this many seconds have passed since the last write, after the last epoch, and when
    # the run stops at a signal or an error (checkpoint.IntervalCheckpoint keeps the last finished
    # epoch in memory in between); 0: after every epoch. Only a hard kill (SIGKILL, the OOM killer)
    # loses finished epochs, at most this many seconds of them. 60 s: a short sweep job writes one
    # checkpoint instead of one per epoch, and keeps a cheap in-memory copy per epoch (README,
    # Performance).
    checkpoint_interval_s: float = 60.0
    # A single run started without hydra.run.dir continues the newest interrupted run of the same
    # experiment and seed under outputs/runs (cli/resume.py), so the same command resumes after
    # Ctrl-C; false: always a new folder.
    resume: bool = True
    # fit/epoch in metrics.json is the first epoch whose training accuracy reaches this: Zhang et
    # al. 2017's "time to fit" (Fig. 1b, where fitting means 100 % training accuracy; 0.99 spares
    # the last few examples a small net may take many epochs on).
    fit_threshold: float = 0.99
    # What stays on disk once the run completed (during training last.pt is always kept: an
    # interrupted run resumes from it). last (default): the final last.pt (weights, optimizer
    # state), which `regbench.fold` and anyone looking at the trained model load; ~2x the model's
    # size (9 MB for the default MLP). none: deleted; nothing regbench reads later needs it (a
    # completed run is recognized by spec.json + metrics.json, the report reads metrics.json and
    # test_calibration.json), so large sweeps should use it. best: last.pt deleted, best.pt kept:
    # the model weights of the epoch with the best `objective` (a val/ metric).
    keep_checkpoint: KeepCheckpoint = KeepCheckpoint.last
    # Fine-tuning (run/finetune.py): train only the model's head for this many epochs, then every
    # layer; 0: every layer from the start; = epochs: the head only (fastai's fine_tune freezes
    # for 1 epoch by default; its 4-epoch Pets example trains the head only).
    freeze_epochs: int = 0
    # While the body is frozen its BatchNorm layers still train (fastai's train_bn=True default).
    train_bn: bool = True

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "trainer.epochs", self.epochs, "an integer >= 1")
        check(self.epochs <= MAX_EPOCHS, "trainer.epochs", self.epochs, f"at most {MAX_EPOCHS:,}")
        check(self.batch_size >= 1, "trainer.batch_size", self.batch_size, "an integer >= 1")
        check(self.checkpoint_interval_s >= 0, "trainer.checkpoint_interval_s",
              self.checkpoint_interval_s, "a number of seconds >= 0 (0: after every epoch)")
        check(0 < self.fit_threshold <= 1, "trainer.fit_threshold", self.fit_threshold,
              "an accuracy in (0, 1]")
        check(0 <= self.freeze_epochs <= self.epochs, "trainer.freeze_epochs", self.freeze_epochs,
              f"an integer in [0, trainer.epochs={self.epochs}] (epochs with only the head trained)")
        cores = os.cpu_count() or 1
        check(0 <= self.num_threads <= cores, "trainer.num_threads", self.num_threads,
              f"an integer in [0, {cores}] (0: every core; this machine has {cores})")
        check(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None, "trainer.device",
              self.device, "auto, cpu, cuda, cuda:N or mps")


class CalibratorName(str, Enum):
    """Post-hoc calibrators (evaluation/calibrators.py), each fitted on the validation split only."""

    temperature = "temperature"
    platt = "platt"
    vector = "vector"
    isotonic = "isotonic"
    matrix = "matrix"


class ShiftMode(str, Enum):
    """evaluation.shift: which corrupted test sets a run is measured on (run/shift_stage.py)."""

    standard = "standard"  # the test split under evaluation/shift.py's corruptions, made in the run
    published = "published"  # CIFAR-10-C, CIFAR-100-C or MNIST-C's files under dataset.root


# Hendrycks & Dietterich 2019's five severities (evaluation/shift.py SEVERITIES).
SHIFT_SEVERITIES = (1, 2, 3, 4, 5)


@dataclass
class EvaluationConfig:
    # Calibrators fitted on the validation split and measured on the test split, next to the raw
    # softmax. All four cheap ones by default (README, "What a run records"); matrix
    # scaling needs 10 validation examples per parameter (K^2 + K), so it is opt-in.
    calibrators: List[CalibratorName] = field(default_factory=lambda: [
        CalibratorName.temperature, CalibratorName.platt, CalibratorName.vector,
        CalibratorName.isotonic])
    # After training, the test split under corruption (Hendrycks & Dietterich 2019; README,
    # "Corruption shift"): null (off: the default job stays as fast), standard (made on the device
    # from the test split) or published (the released files under dataset.root).
    shift: Optional[ShiftMode] = None
    # The corruptions measured; null: every one that applies (standard: evaluation/shift.py's
    # standard_suite, saturate on RGB only; published: every file of the release).
    shift_corruptions: Optional[List[str]] = None
    # The severities measured: all five, as CIFAR-10-C publishes them (MNIST-C has one level).
    shift_severities: List[int] = field(default_factory=lambda: list(SHIFT_SEVERITIES))
    # The test phase's figures: the reliability diagram, confidence histogram, reliability panel
    # and class-probability heat-map (PNG files and TensorBoard images) and the projector's
    # features. false skips them (metrics, curves, histograms and test_calibration.json, from which
    # the report draws its own figures, stay): for sweeps of many short runs, where they cost more
    # than training (README, Performance).
    figures: bool = True
    # Out-of-distribution sets scored against the test split after training (run/ood_stage.py):
    # held_out_classes (needs dataset.classes), the synthetic gaussian, uniform, rademacher, blobs,
    # a dataset name (its test split), folder:<path> (every image under it). []: none.
    ood: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        severities = list(self.shift_severities)
        check(bool(severities) and len(set(severities)) == len(severities)
              and set(severities) <= set(SHIFT_SEVERITIES), "evaluation.shift_severities",
              severities, "a non-empty list of distinct severities from 1 to 5")
        if self.shift_corruptions is not None:
            names = list(self.shift_corruptions)
            check(bool(names) and len(set(names)) == len(names), "evaluation.shift_corruptions",
                  names, "a non-empty list of distinct corruption names, or null for all that apply")


@dataclass
class Config:
    seed: int = 0
    # The metric the entrypoint returns, for sweepers that optimize it (e.g. Optuna): a validation
    # metric, since the test split must not steer model selection.
    objective: str = "val/acc"
    dataset: DatasetConfig = MISSING
    model: Any = MISSING
    # One of the optimizer schemas of optim.py, pulled in by configs/optimizer/<name>.yaml.
    optimizer: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # One entry per selected regularizer, keyed by its name; empty for the baseline.
    regularizer: Dict[str, Any] = field(default_factory=dict)
    # One entry per selected logger (run/loggers.py): tensorboard, mlflow; never part of a result.
    logger: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(0 <= self.seed < SEED_RANGE, "seed", self.seed, "an integer in [0, 2**32)")


def register_configs() -> None:
    ConfigStore.instance().store(name="schema", node=Config)


def register_schema(group: str, name: str, node: type) -> None:
    """Register the schema of one option of a config group (used by models and regularizers)."""
    ConfigStore.instance().store(group=f"schema/{group}", name=name, node=node)
