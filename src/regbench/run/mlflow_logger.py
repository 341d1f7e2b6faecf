"""``logger=mlflow``: one MLflow run per regbench run, with its identity as params, the per-epoch
and final metrics, and its files (metrics.json, spec.json, history.jsonl, figures) as artifacts.

The MLflow run's id is kept in the run folder (``mlflow_run.json``), so a resumed run continues
the same MLflow run and the report can nest a sweep's runs under one parent
(report/mlflow_report.py). ``MlflowClient`` with explicit run ids rather than mlflow's fluent API:
jobs of a parallel sweep share no global "active run".

Reaching the tracking store is checked before training (one line when it cannot be reached); a
failure to log later is a warning, never a lost run: the run folder has every number.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from regbench.config import ConfigError
from regbench.files import atomic_write_json
from regbench.run.loggers import MlflowConfig
from regbench.run.spec import flatten, plain

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"  # in the run folder: tracking URI, experiment and run id
ARTIFACT_PATTERNS = ("*.json", "*.jsonl", "*.png")
# MLflow's own limits (mlflow/utils/validation.py): param values of 6,000 characters, 1,000
# metrics per log_batch call.
MAX_PARAM_LENGTH = 6000
BATCH_SIZE = 1000
# A tracking server that does not answer: mlflow's HTTP client retries for minutes by default
# (MLFLOW_HTTP_REQUEST_MAX_RETRIES 7 with backoff); a run should fail fast instead. And no
# "View run ... at" line on stdout per finished run (regbench prints its own summary). A user's
# own settings of these variables win.
ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# Characters MLflow accepts in metric and param names (alphanumerics, _ - . space : /).
INVALID_NAME_CHARACTERS = re.compile(r"[^\w\-. :/]")


def metric_name(key: str) -> str:
    """A metrics.json key as MLflow accepts it: shift/acc@s1 -> shift/acc_s1."""
    return INVALID_NAME_CHARACTERS.sub("_", key.replace("@", "_"))


def tracking_uri(cfg: MlflowConfig) -> str:
    """The configured URI; else $MLFLOW_TRACKING_URI; else outputs/mlflow.db (SQLite) in the
    folder regbench was started in."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path.cwd() / 'outputs' / 'mlflow.db').as_posix()}"


def default_artifact_location(uri: str) -> Optional[str]:
    """Artifacts of a local SQLite store go beside it (outputs/mlartifacts), not into ./mlruns."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def connect(cfg: MlflowConfig) -> tuple["MlflowClient", str, str]:
    """(client, tracking URI, experiment id), the experiment created when missing; one line when
    mlflow is missing or the store cannot be reached."""
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError('logger=mlflow needs MLflow: pip install -e ".[mlflow]"') from None
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    try:
        experiment_id = experiment_id_of(client, cfg.experiment_name, uri)
    except Exception as error:  # mlflow raises MlflowException, requests' and SQLAlchemy's errors
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f"logger.mlflow.tracking_uri={uri!r} cannot be used: {reason}") from None
    return client, uri, experiment_id


def experiment_id_of(client: "MlflowClient", name: str, uri: str) -> str:
    """The experiment's id, created when missing. Parallel jobs of a sweep start at once: when
    another job created it in between, the store refuses a second one (RESOURCE_ALREADY_EXISTS),
    and that one is used."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, default_artifact_location(uri))
    except MlflowException as error:
        experiment = client.get_experiment_by_name(name)
        if error.error_code != "RESOURCE_ALREADY_EXISTS" or experiment is None:
            raise
        return experiment.experiment_id


def params_of(identity: Mapping[str, Any]) -> dict[str, str]:
    """The run's identity as MLflow params: flat keys, values as text within MLflow's limit."""
    return {metric_name(key): json.dumps(plain(value))[:MAX_PARAM_LENGTH] if not isinstance(value, str)
            else value[:MAX_PARAM_LENGTH] for key, value in flatten(identity).items()}


def finite_numbers(record: Mapping[str, Any]) -> dict[str, float]:
    return {metric_name(key): float(value) for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class MlflowRun:
    """The MLflow run of one regbench run folder."""

    def __init__(self, client: "MlflowClient", uri: str, run_id: str, folder: Path) -> None:
        self.client, self.uri, self.run_id, self.folder = client, uri, run_id, folder
        self.warned = False

    @classmethod
    def start(cls, cfg: MlflowConfig, folder: Path, identity: Mapping[str, Any],
              name: str) -> "MlflowRun":
        """The folder's MLflow run (continued when mlflow_run.json names one in the same store),
        else a new one with the identity as params; before any training."""
        client, uri, experiment_id = connect(cfg)
        previous = read_run_file(folder)
        if previous and previous.get("tracking_uri") == uri and run_exists(client, previous["run_id"]):
            client.update_run(previous["run_id"], status="RUNNING")
            log.info("MLflow: continuing run %s in %s", previous["run_id"], uri)
            return cls(client, uri, previous["run_id"], folder)
        run = client.create_run(experiment_id, run_name=name, tags={"regbench.folder": str(folder)})
        run_id = run.info.run_id
        params = params_of(identity)
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=items[start:start + 100])
        atomic_write_json(folder / RUN_FILE, {"tracking_uri": uri, "experiment_id": experiment_id,
                                              "run_id": run_id})
        log.info("MLflow: run %s in experiment %r at %s", run_id, cfg.experiment_name, uri)
        return cls(client, uri, run_id, folder)

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, value, stamp, step) for key, value in finite_numbers(values).items()]
        self.quietly(lambda: [self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH_SIZE])
                              for i in range(0, len(metrics), BATCH_SIZE)])

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        self.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

    def finish(self, metrics: Mapping[str, Any], status: str, step: int) -> None:
        """Final metrics, the folder's files as artifacts, and the MLflow status (FINISHED for a
        completed run, KILLED for an interrupted one, FAILED otherwise)."""
        self.log_metrics(metrics, step)
        for pattern in ARTIFACT_PATTERNS:
            for path in sorted(self.folder.glob(pattern)):
                if path.name != RUN_FILE:
                    self.quietly(lambda path=path: self.client.log_artifact(self.run_id, str(path)))
        mlflow_status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.quietly(lambda: self.client.set_terminated(self.run_id, status=mlflow_status))

    def quietly(self, action: Any) -> None:
        """Run one MLflow call; a failure is one warning per run (the run folder has the numbers)."""
        try:
            action()
        except Exception as error:  # any transport or store error: logging must not stop a run
            if not self.warned:
                log.warning("MLflow: logging to %s failed (%s); the run goes on and its folder "
                            "keeps every number", self.uri, str(error).splitlines()[0][:200])
                self.warned = True


def read_run_file(folder: Path) -> Optional[dict[str, Any]]:
    try:
        found = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("run_id"), str) else None


def run_exists(client: "MlflowClient", run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST, or the store lost it
        return False
    return True
