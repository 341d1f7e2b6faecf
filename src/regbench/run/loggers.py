"""Where a run's numbers go besides its folder: ``logger=tensorboard`` (the default), ``logger=mlflow``,
or both (``logger=[tensorboard,mlflow]``), one config group keyed by name like ``regularizer``.

TensorBoard is the run recorder's own writer (run/recorder.py); without it the run writes no event
files (its JSON files and figures stay). MLflow is run/mlflow_logger.py. Logger settings never
change a result: they are outside every run's identity (spec.RESULT_NEUTRAL_PREFIXES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from regbench.config import check, register_schema

TENSORBOARD = "tensorboard"
MLFLOW = "mlflow"
LOGGERS = (TENSORBOARD, MLFLOW)


@dataclass
class TensorBoardConfig:
    """TensorBoard event files in the run folder (``tensorboard --logdir outputs``)."""


@dataclass
class MlflowConfig:
    # Where runs are logged: an MLflow tracking URI (http://host:port, sqlite:///path, a folder).
    # null: $MLFLOW_TRACKING_URI when set, else a local SQLite store, outputs/mlflow.db under the
    # folder regbench was started in, which works offline and needs no server
    # (`mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db` shows it).
    tracking_uri: Optional[str] = None
    # The MLflow experiment the runs go to (created when missing).
    experiment_name: str = "regbench"

    def __post_init__(self) -> None:
        check(bool(self.experiment_name.strip()), "logger.mlflow.experiment_name",
              self.experiment_name, "a non-empty name")


register_schema("logger", TENSORBOARD, TensorBoardConfig)
register_schema("logger", MLFLOW, MlflowConfig)

