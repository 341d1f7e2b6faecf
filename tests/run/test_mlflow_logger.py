"""logger=mlflow: the names MLflow accepts, a real `mlflow server` on 127.0.0.1 taking a 2-job
sweep and its report (read back with MlflowClient), a local SQLite store continued on resume, and
an unreachable server refused in one line before training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import FAST, run_cli, train_in_process
from regbench.run.loggers import MlflowConfig
from regbench.run.mlflow_logger import (
    RUN_FILE,
    MlflowRun,
    experiment_id_of,
    metric_name,
    params_of,
    tracking_uri,
)

mlflow = pytest.importorskip("mlflow", reason="logger=mlflow needs the mlflow extra")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite store in a temporary folder, stopped by its PID
    (its process group: the server starts workers of its own)."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
               "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"]
    server = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL,
                              stderr=open(folder / "server.log", "w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> str:
    """One local store for the module's in-process tests (a new SQLite store runs MLflow's schema
    migrations first, which takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow_store') / 'store.db'}"


def test_metric_names_become_names_mlflow_accepts():
    from mlflow.utils.validation import validate_param_and_metric_name

    for key in ("shift/acc@s1", "ood/auroc_msp", "test/ece(temperature)", "val/acc"):
        assert validate_param_and_metric_name(metric_name(key))
    assert metric_name("shift/acc@s1") == "shift/acc_s1"
    assert metric_name("val/acc") == "val/acc"


def test_params_are_the_flat_identity_as_text():
    params = params_of({"regularizer": {"dropout": {"p": 0.5}}, "seed": 3, "dataset.name": "digits",
                        "evaluation.calibrators": ["temperature"]})
    assert params == {"regularizer.dropout.p": "0.5", "seed": "3", "dataset.name": "digits",
                      "evaluation.calibrators": '["temperature"]'}


def test_the_default_store_is_sqlite_under_outputs(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(MlflowConfig()) == f"sqlite:///{(tmp_path / 'outputs' / 'mlflow.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri(MlflowConfig()) == "http://127.0.0.1:1"
    assert tracking_uri(MlflowConfig(tracking_uri="file:///x")) == "file:///x"


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, sqlite_store):
    cfg = MlflowConfig(tracking_uri=sqlite_store)
    first = MlflowRun.start(cfg, tmp_path, {"seed": 0}, "first")
    first.log_epoch({"epoch": 1, "val/acc": 0.5})
    first.finish({"status": "interrupted"}, "interrupted", 1)
    again = MlflowRun.start(cfg, tmp_path, {"seed": 0}, "first")
    assert again.run_id == first.run_id
    assert again.client.get_run(again.run_id).info.status == "RUNNING"
    assert json.loads((tmp_path / RUN_FILE).read_text())["run_id"] == first.run_id


def test_a_run_logs_params_epochs_final_metrics_and_files_to_a_local_store(tmp_path, sqlite_store):
    metrics = train_in_process(tmp_path / "run", ["trainer.epochs=2", "logger=[tensorboard,mlflow]",
                                                  f"logger.mlflow.tracking_uri={sqlite_store}"])
    from mlflow.tracking import MlflowClient

    found = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    client = MlflowClient(found["tracking_uri"])
    run = client.get_run(found["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["regularizer"] == "none" and run.data.params["seed"] == "0"
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    assert {"metrics.json", "spec.json", "history.jsonl"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_logger_settings_are_not_part_of_a_runs_identity():
    from regbench.cli.compose import compose_config
    from regbench.run.spec import RunSpec

    plain = RunSpec.from_config(compose_config(FAST)).identity
    logged = RunSpec.from_config(compose_config([*FAST, "logger=[tensorboard,mlflow]",
                                                 "logger.mlflow.experiment_name=x"])).identity
    assert plain == logged


def test_an_unreachable_tracking_server_is_refused_in_one_line_before_training(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_cli([*FAST, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}"], cwd=tmp_path,
                     env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [line for line in errors if line.startswith(f"regbench: error: logger.mlflow.tracking_uri='{uri}'")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "epoch 1/" not in result.stderr + result.stdout
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").rglob("history.jsonl"))


@pytest.mark.slow
def test_a_sweep_and_its_report_reach_a_real_mlflow_server(mlflow_server, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "regularizer=none,dropout", *FAST, "trainer.epochs=2", "logger=[tensorboard,mlflow]",
                      f"logger.mlflow.tracking_uri={mlflow_server}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "View run" not in result.stdout
    report = run_cli([str(sweep)], cwd=tmp_path, module="regbench.report")
    assert report.returncode == 0, report.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("regbench")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    parents = [run for name, run in runs.items() if name.startswith("report")]
    assert len(parents) == 1 and len(runs) == 3
    parent = parents[0].info.run_id
    children = [run for run in runs.values() if run.info.run_id != parent]
    assert {run.data.params["regularizer"] for run in children} == {"none", "dropout"}
    assert all(run.data.tags["mlflow.parentRunId"] == parent for run in children)
    assert all(len(client.get_metric_history(run.info.run_id, "val/acc")) >= 2 for run in children)
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"summary.csv", "summary.md", "comparisons.csv"} <= artifacts
    shutil.rmtree(sweep)


def test_a_run_without_the_tensorboard_logger_writes_no_event_files(tmp_path, sqlite_store):
    run_dir = tmp_path / "run"
    train_in_process(run_dir, ["trainer.epochs=1", "logger=mlflow",
                               f"logger.mlflow.tracking_uri={sqlite_store}"])
    assert not list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "metrics.json").is_file() and (run_dir / RUN_FILE).is_file()
    with_tensorboard = tmp_path / "with"
    train_in_process(with_tensorboard, ["trainer.epochs=1"])
    assert list(with_tensorboard.glob("events.out.tfevents.*"))


def test_a_job_that_loses_the_race_to_create_the_experiment_uses_the_winners(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'race.db'}"
    winner, loser = MlflowClient(tracking_uri=uri), MlflowClient(tracking_uri=uri)
    created = winner.create_experiment("regbench")
    real_lookup, lookups = loser.get_experiment_by_name, []

    def lookup(name):  # the loser's first look came before the winner created it
        lookups.append(name)
        return None if len(lookups) == 1 else real_lookup(name)

    monkeypatch.setattr(loser, "get_experiment_by_name", lookup)
    assert experiment_id_of(loser, "regbench", uri) == created
