"""What a run is, defined once: its experiment identity, its name, its files and its statuses.

No torch here: the report, the entrypoint and the checkpoint check all import this module, so two
runs are "the same experiment" by one rule everywhere.

- **Experiment settings**: the flattened configuration minus the seed and minus the settings that
  cannot change a result (``RESULT_NEUTRAL_KEYS``: where the data lives, threads, progress bar...).
  Runs with equal experiment settings form one group of a sweep report; they differ by seed only.
- **Identity**: the experiment settings plus the seed. A run folder belongs to one identity; it is
  resumed or reported as completed only for that identity (``spec.json`` in the folder), and a
  checkpoint is loaded only by it.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional

# Settings that cannot change what a run computes, so they are not part of its identity.
RESULT_NEUTRAL_KEYS = frozenset({
    "dataset.root",         # where the same files are
    "dataset.download",     # whether missing files may be fetched
    "model.download",       # whether missing pretrained weights may be fetched
    "dataset.num_workers",  # how many processes decode the same images
    "dataset.ood_sets",     # what suite=shift_ood would pick (evaluation.ood is what a run does)
    "trainer.progress",     # progress bar on or off
    "trainer.num_threads",  # CPU threads (set per machine for parallel sweeps)
    "trainer.device",       # where the same computation runs
    "trainer.checkpoint",   # whether last.pt is written
    "trainer.checkpoint_interval_s",  # how often
    "trainer.resume",       # whether the same command continues an interrupted run
    "trainer.keep_checkpoint",  # which checkpoint stays after the run
    "evaluation.figures",   # whether the test phase draws figures
    "objective",            # what a sweeper reads from the finished run
})
RESULT_NEUTRAL_PREFIXES = ("hydra.", "logger.")  # where numbers are logged (run/loggers.py)
SEED_KEY = "seed"
REGULARIZER_KEY = "regularizer"
BASELINE = "none"  # the regularizer option that means "no regularization"


class Status(str, enum.Enum):
    """A run folder's state. The first four are written in metrics.json by the run; the last two
    are what the report infers when metrics.json is missing or cannot be read."""

    completed = "completed"
    failed = "failed"
    diverged = "diverged"
    interrupted = "interrupted"
    unfinished = "unfinished"
    unreadable = "unreadable"


# The files of a run folder (run/folder.py reads and writes them).
SPEC_FILE = "spec.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.jsonl"
CHECKPOINT_FILE = "last.pt"
BEST_CHECKPOINT_FILE = "best.pt"  # trainer.keep_checkpoint=best
FOLDED_FILE = "folded.pt"  # python -m regbench.fold
CALIBRATION_FILE = "test_calibration.json"
# The test split's raw logits (float32 [N, K], test-split order) and labels (int64 [N]), a
# numpy .npz the recorder writes after the test phase and the report ensembles over seeds.
TEST_LOGITS_FILE = "test_logits.npz"
# evaluation.ood: each OOD score of the test split (in_<score>) and of every set (<set>_<score>),
# float32 arrays of a numpy .npz (run/ood_stage.py writes it, the report reads it).
TEST_OOD_FILE = "test_ood.npz"
LOCK_FILE = ".regbench.lock"
LOG_FILE = "regbench.log"  # Hydra's job log: <hydra.job.name>.log (configs/config.yaml)
HYDRA_SUBDIR = ".hydra"
# Inside HYDRA_SUBDIR, as Hydra names them.
HYDRA_CONFIG_FILE = "config.yaml"
HYDRA_HYDRA_FILE = "hydra.yaml"
HYDRA_OVERRIDES_FILE = "overrides.yaml"
# The test phase's figures (evaluation.figures), as PNG files.
RELIABILITY_PNG = "test_reliability.png"
CONFIDENCE_HIST_PNG = "test_confidence_hist.png"
RELIABILITY_PANEL_PNG = "test_reliability_panel.png"
CLASS_PROBABILITIES_PNG = "test_class_probabilities.png"

# Metric keys that several modules read (metrics.json, the summary line, the report).
TEST_ACC = "test/acc"
TRAIN_ACC = "train/acc"
TEST_NLL = "test/nll"
TEST_ECE = "test/ece"
TEST_BRIER = "test/brier"
TEST_ECE_TEMPERATURE = "test/ece@temperature"
TEST_MEAN_CONFIDENCE = "test/mean_confidence"
GAP_ACC = "gap/acc"
GAP_NLL = "gap/nll"
EPOCHS = "epochs"
SECONDS = "seconds"
STATUS = "status"
# metrics.json: true when the final training accuracy stayed near chance (run/engine.py decides).
DID_NOT_LEARN = "did_not_learn"
# What every completed run's metrics.json holds (its last lines and the report read them).
COMPLETED_KEYS = (TEST_ACC, TEST_NLL, TEST_ECE, TEST_MEAN_CONFIDENCE, EPOCHS, SECONDS)
LOWER_IS_BETTER_WORDS = ("nll", "ece", "mce", "loss", "brier", "gap", "entropy", "seconds", "fpr")
# OOD detection areas are higher-is-better whatever score they rate (ood/auroc_entropy is the AUROC
# of the entropy score), so they are checked first.
HIGHER_IS_BETTER_WORDS = ("auroc", "aupr")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` (a metric key) is the better one."""
    name = metric.lower()
    if any(word in name for word in HIGHER_IS_BETTER_WORDS):
        return False
    return any(word in name for word in LOWER_IS_BETTER_WORDS)


# Corruption shift (evaluation.shift) and OOD detection (evaluation.ood): the summary keys of
# metrics.json that the report compares (names fixed by issue #23).
SHIFT_ACC = "shift/acc"
SHIFT_ECE = "shift/ece"
SHIFT_NLL = "shift/nll"
SHIFT_ECE_TEMPERATURE = "shift/ece@temperature"


def severity_key(metric: str, severity: int) -> str:
    """``shift/ece@s5``: ``metric`` averaged over the corruptions at one severity."""
    return f"shift/{metric}@s{severity}"


def corruption_key(corruption: str, severity: int, metric: str) -> str:
    """``shift/gaussian_noise/s3/acc``: one corruption at one severity."""
    return f"shift/{corruption}/s{severity}/{metric}"


def ood_mean_key(metric: str, score: str) -> str:
    """``ood/auroc_msp``: a detection metric of one score, averaged over the OOD sets."""
    return f"ood/{metric}_{score}"


def ood_set_key(set_name: str, metric: str, score: str) -> str:
    """``ood/gaussian/fpr95_energy``: a detection metric of one score on one OOD set."""
    return f"ood/{set_name}/{metric}_{score}"


# Probes of published claims (probes.py, report_probes.py).
FIT_EPOCH = "fit/epoch"  # Zhang et al. 2017's time to fit
VARIANCE_SHIFT_MAX = "test/variance_shift_max"  # Li et al. 2019
VARIANCE_SHIFT_MEAN = "test/variance_shift_mean"
EFFECTIVE_LR = "train/effective_lr"  # van Laarhoven 2017: lr / ||w||^2 of layers feeding BN
BN_WEIGHT_NORM = "train/bn_weight_norm"


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def regularizer_names(config: Mapping[str, Any]) -> list[str]:
    """The selected regularizers, sorted, or ["none"] for the baseline (``regularizer=[]``, or
    ``regularizer=none``)."""
    return sorted(config.get(REGULARIZER_KEY) or {}) or [BASELINE]


def regularizer_label(names: list[str]) -> str:
    """One regularizer set as one string: ``dropout+label_smoothing``."""
    return "+".join(names)


def plain(value: Any) -> Any:
    """Enums as their values, tuples as lists: the form a YAML or JSON file gives back."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def experiment_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that define an experiment (everything but the seed and the result-neutral
    keys), flattened, plus ``regularizer``: the selected names as one label (an option without
    parameters, like ``none``, has no leaf of its own)."""
    settings = {
        key: plain(value) for key, value in flatten(config).items()
        if key != SEED_KEY and key not in RESULT_NEUTRAL_KEYS
        and not key.startswith(RESULT_NEUTRAL_PREFIXES)
    }
    settings[REGULARIZER_KEY] = regularizer_label(regularizer_names(config))
    return dict(sorted(settings.items()))


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: the experiment settings and the seed."""
    return {**experiment_settings(config), SEED_KEY: config.get(SEED_KEY)}


def canonical(value: Any) -> str:
    """An order-stable text form of a setting, for comparing and hashing."""
    return json.dumps(plain(value), sort_keys=True, default=str)


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> Optional[tuple[str, Any, Any]]:
    """(key, old value, new value) of the first setting that differs, or None when equal."""
    missing = object()
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before is missing or after is missing or canonical(before) != canonical(after):
            return key, None if before is missing else before, None if after is missing else after
    return None


def run_name(config: Mapping[str, Any]) -> str:
    """A readable name for one run: what is trained, with what, and the seed."""
    model = (config.get("model") or {}).get("name", "?")
    dataset = (config.get("dataset") or {}).get("name", "?")
    names = regularizer_label(regularizer_names(config))
    return f"{names} | {model} on {dataset} | seed {config.get(SEED_KEY)}"


@dataclass(frozen=True)
class RunSpec:
    """A run's specification, built once from the composed configuration (a plain container)."""

    config: Mapping[str, Any]

    @property
    def identity(self) -> dict[str, Any]:
        return identity(self.config)

    @property
    def experiment_settings(self) -> dict[str, Any]:
        return experiment_settings(self.config)

    @property
    def name(self) -> str:
        return run_name(self.config)

    @property
    def regularizers(self) -> list[str]:
        return regularizer_names(self.config)

    def as_json(self) -> dict[str, Any]:
        """The content of ``spec.json``."""
        return {"name": self.name, "identity": self.identity}

    @classmethod
    def from_config(cls, cfg: Any) -> "RunSpec":
        """The spec of a composed config (an OmegaConf DictConfig), interpolations resolved."""
        from omegaconf import OmegaConf

        return cls(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def different_run_message(folder: Any, key: str, old: Any, new: Any) -> str:
    """One line for a run folder that holds another experiment."""
    return (f"{folder} belongs to a different run ({key} was {old!r} there, now {new!r}); "
            f"use a new hydra.run.dir (or hydra.sweep.dir)")
