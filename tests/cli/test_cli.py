"""The user-facing commands, end to end, in a subprocess from an empty working directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import read_metrics, run_cli

pytestmark = pytest.mark.slow

METRICS_KEYS = {"status", "test/acc", "test/nll", "train/acc", "val/acc", "epochs", "seconds",
                "dataset", "model", "regularizer", "seed"}
HISTORY_KEYS = {"epoch", "train/loss", "train/acc", "val/nll", "val/acc", "lr", "seconds"}
SCALARS = {"train/loss", "train/acc", "val/nll", "val/acc", "lr"}


def only_run_folder(root: Path) -> Path:
    folders = [path.parent for path in root.rglob("metrics.json")]
    assert len(folders) == 1, folders
    return folders[0]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`python -m regbench` with no arguments, exactly as a new user runs it."""
    cwd = tmp_path_factory.mktemp("user")
    result = run_cli([], cwd=cwd)
    return cwd, result


def test_default_run_reaches_documented_accuracy(default_run):
    cwd, result = default_run
    assert result.returncode == 0, result.stderr
    run_dir = only_run_folder(cwd / "outputs")
    metrics = read_metrics(run_dir)
    assert METRICS_KEYS <= metrics.keys()
    assert metrics["status"] == "completed"
    assert metrics["test/acc"] >= 0.90
    assert metrics["epochs"] == 30
    assert (metrics["dataset"], metrics["model"], metrics["regularizer"]) == ("digits", "mlp", ["none"])


def test_default_run_prints_a_summary(default_run):
    cwd, result = default_run
    run_dir = only_run_folder(cwd / "outputs")
    metrics = read_metrics(run_dir)
    assert f"test accuracy {metrics['test/acc']:.4f}" in result.stdout
    assert "tensorboard --logdir outputs" in result.stdout
    assert str(run_dir.relative_to(cwd)) in result.stdout


def test_default_run_folder_layout(default_run):
    cwd, _ = default_run
    run_dir = only_run_folder(cwd / "outputs")
    # outputs/runs/<date>/<time>_<overrides> (none here: the default run)
    assert run_dir.relative_to(cwd).parts[:2] == ("outputs", "runs")
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "last.pt").is_file()
    assert (run_dir / "regbench.log").is_file()  # hydra.job.name, not __main__
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in history] == list(range(1, 31))
    assert all(HISTORY_KEYS <= record.keys() for record in history)
    assert not (cwd / "data").exists() or not any((cwd / "data").iterdir())


def test_default_run_writes_tensorboard_scalars(default_run):
    cwd, _ = default_run
    events = EventAccumulator(str(only_run_folder(cwd / "outputs")))
    events.Reload()
    assert SCALARS <= set(events.Tags()["scalars"])
    assert len(events.Scalars("val/acc")) == 30


def test_default_run_writes_calibration_dashboards(default_run):
    """Issue 4: histograms per epoch, figures at the end (also as PNG), HParams with final metrics."""
    cwd, _ = default_run
    run_dir = only_run_folder(cwd / "outputs")
    events = EventAccumulator(str(run_dir), size_guidance={"histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for split in ("train", "val"):
        assert {f"{split}/{m}" for m in ("acc", "nll", "ece", "mean_confidence", "entropy")} <= set(tags["scalars"])
    assert {"test/acc", "test/ece", "test/ece@temperature", "test/nll@temperature", "gap/acc", "temperature"} <= set(tags["scalars"])
    histograms = {"val/confidence", "val/confidence_correct", "val/confidence_incorrect",
                  "val/true_class_prob", "val/entropy"}
    assert histograms <= set(tags["histograms"])
    assert len(events.Histograms("val/confidence")) == 30
    assert {"test/reliability", "test/confidence_hist"} <= set(tags["images"])
    assert (run_dir / "test_reliability.png").stat().st_size > 1000
    assert (run_dir / "test_confidence_hist.png").stat().st_size > 1000
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["dataset.name"].string_value == "digits"
    assert hparams["regularizer"].string_value == "none"
    assert hparams["seed"].number_value == 0
    # No experiment summary in a run's own file: TensorBoard would use it for every run of the
    # logdir (recording.hparams_experiment); the sweep writes the one experiment in report/.
    assert "_hparams_/experiment" not in content
    metrics = read_metrics(run_dir)
    for key in ("test/nll", "test/brier", "test/ece", "test/mce", "test/mean_true_class_prob",
                "temperature", "test/ece@temperature", "test/nll@temperature", "gap/acc", "gap/nll"):
        assert isinstance(metrics[key], float), key
    assert metrics["gap/acc"] == pytest.approx(metrics["train/acc"] - metrics["test/acc"])


def test_console_script_is_equivalent(tmp_path):
    script = Path(sys.executable).with_name("regbench")
    if not script.exists():
        script = Path(shutil.which("regbench") or "regbench")
    result = subprocess.run([str(script), "trainer.epochs=1", "trainer.progress=false",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert read_metrics(tmp_path / "run")["status"] == "completed"


def test_multirun_gives_one_folder_per_job(tmp_path):
    result = run_cli(["-m", "seed=0,1", "trainer.epochs=1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = sorted((read_metrics(path.parent) for path in (tmp_path / "outputs" / "multirun").rglob("metrics.json")),
                     key=lambda m: m["seed"])
    assert [m["seed"] for m in metrics] == [0, 1]
    assert all(m["status"] == "completed" for m in metrics)
    assert metrics[0]["test/nll"] != metrics[1]["test/nll"]


def test_bad_value_is_one_line_without_traceback(tmp_path):
    result = run_cli(["trainer.epochs=0", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "regbench: error: trainer.epochs=0 is not allowed: an integer >= 1"]
    assert not (tmp_path / "run" / "history.jsonl").exists()


def test_the_entrypoint_imports_no_library_the_default_job_does_not_use():
    """Start-up (DEVELOPERS.md): torchvision (with torch._dynamo), torchmetrics' package init and
    scipy cost seconds to import and the default digits/MLP job needs none of them, so they are
    imported by the code that uses them; scikit-learn and matplotlib when loading digits and
    drawing figures, which a job may not do."""
    script = ("import sys, regbench.train; "
              "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    imported = set(result.stdout.split())
    assert "torch" in imported and "hydra" in imported
    lazy = {"torchvision", "torchmetrics", "scipy", "sklearn", "matplotlib"}
    assert imported.isdisjoint(lazy), imported & lazy


def run_exit(body: str) -> subprocess.CompletedProcess:
    """A process that ends through train.exit_without_teardown after ``body``; stdout is a pipe,
    so what it printed is still in the buffer when it exits."""
    script = "\n".join(["import atexit, threading, time", "from regbench.train import exit_without_teardown",
                        body, "exit_without_teardown()", "print('after the exit')"])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_exit_without_teardown_runs_the_exit_handlers_and_flushes_output():
    result = run_exit("atexit.register(lambda: print('exit handler ran'))\nprint('buffered', end=' ')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "buffered exit handler ran\n"


def test_exit_without_teardown_waits_for_a_running_thread():
    result = run_exit("threading.Thread(target=lambda: (time.sleep(0.5), print('thread finished'))).start()")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "thread finished\n"
