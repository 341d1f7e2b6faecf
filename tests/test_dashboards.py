"""What a person reads at a glance: job folder names, --help, HParams, the Custom Scalars layout,
the report's plots for many groups and its TensorBoard event file, the checkpoint keep policy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from matplotlib.text import Text
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import run_cli, train_in_process
from regbench.cli.hydra_hooks import MAX_JOB_DIR, job_dir, option_groups_text
from regbench.report import (
    OKABE_ITO,
    Group,
    Grouping,
    Job,
    accuracy_vs_ece,
    make_report,
    reliability,
    repel_offsets,
)
from regbench.run.folder import natural_key
from regbench.run.tensorboard import HPARAMS_METRICS, RUN_NAME_HPARAM, SCALARS_LAYOUT

SMALL = ["trainer.epochs=2", "model.hidden_sizes=[16]"]


# --- job folder names -----------------------------------------------------------------------------

def test_job_folder_name_is_number_then_portable_overrides():
    assert job_dir(3, "regularizer=label_smoothing,seed=1") == "3_regularizer=label_smoothing,seed=1"
    assert job_dir(0, "model.hidden_sizes=[64,64],dataset.root=/a b") == \
        "0_model.hidden_sizes=64+64,dataset.root=_a_b"
    assert job_dir(7, "") == "7"
    long_a, long_b = job_dir(12, "x=" + "a" * 200), job_dir(12, "x=" + "a" * 199 + "b")
    assert len(long_a) == MAX_JOB_DIR and long_a != long_b and long_a.startswith("12_x=aaa")
    assert job_dir(12, "x=" + "a" * 200) == long_a  # a rerun finds the same folder


def test_job_folders_sort_by_job_number():
    names = ["10_seed=1", "2_seed=0", "report", "1_regularizer=none"]
    assert sorted(names, key=natural_key) == ["1_regularizer=none", "2_seed=0", "10_seed=1", "report"]


def test_help_lists_every_option_with_a_description_and_no_schema_group(tmp_path):
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "schema/" not in result.stdout
    for path in (Path(__file__).parents[1] / "configs").glob("*/*.yaml"):
        if path.parent.name in ("dataset", "model", "optimizer", "regularizer", "experiment"):
            line = next(l for l in result.stdout.splitlines() if f"{path.parent.name}={path.stem} " in l)
            assert len(line.split(maxsplit=1)[1]) > 8, line  # a description follows
    assert "regularizer=label_smoothing      Label smoothing (Szegedy et al. 2016, §7)" in option_groups_text()


# --- a run's TensorBoard file ---------------------------------------------------------------------

def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def plugin_tags(accumulator: EventAccumulator, plugin: str) -> dict:
    return accumulator.PluginTagToContent(plugin)


def test_run_writes_layout_and_hparams_session_without_experiment(tmp_path):
    train_in_process(tmp_path / "run", [*SMALL, "regularizer=label_smoothing"])
    run = events(tmp_path / "run")
    layout = layout_pb2.Layout()
    layout.ParseFromString(run.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == [title for title, _, _ in SCALARS_LAYOUT]
    assert [c.closed for c in layout.category] == [False, False, True]  # test/, gap/ folded away
    charts = {chart.title: list(chart.multiline.tag) for chart in layout.category[0].chart}
    assert charts["accuracy"] == ["val/acc$"] and charts["ECE (fraction)"] == ["val/ece$"]
    tags = plugin_tags(run, "hparams")
    assert hparams_metadata.EXPERIMENT_TAG not in tags  # the sweep's own summary defines columns
    start = hparams_metadata.parse_session_start_info_plugin_data(tags[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams[RUN_NAME_HPARAM].string_value == "label_smoothing | mlp on digits | seed 0"
    assert start.hparams["regularizer.label_smoothing.epsilon"].number_value == pytest.approx(0.1)


# --- the report for many groups ----------------------------------------------------------------

def fake_group(number: int, folder: Path, acc: float, ece: float) -> Group:
    """A group of two completed seeds with a test_calibration.json (one sparse bin of 2)."""
    jobs = []
    for seed in (0, 1):
        job_folder = folder / f"{number}_{seed}"
        job_folder.mkdir(parents=True)
        counts = [0] * 10 + [2, 30, 60, 100, 150]
        (job_folder / "test_calibration.json").write_text(json.dumps({
            "bin_edges": [i / 15 for i in range(16)],
            "bin_confidence": [None if not c else (i + 0.5) / 15 for i, c in enumerate(counts)],
            "bin_accuracy": [None if not c else 0.9 for c in counts], "bin_count": counts,
            "histogram_edges": [i / 30 for i in range(31)],
            "histogram_correct": [0] * 25 + [10] * 5, "histogram_incorrect": [0] * 25 + [1] * 5}))
        jobs.append(Job(job_folder.name, job_folder, "completed", {"regularizer": "x"}, seed,
                        metrics={"test/acc": acc, "test/ece": ece, "test/ece@temperature": ece / 3}))
    return Group(f"label_smoothing, regularizer.label_smoothing.epsilon={number / 100}", {}, jobs)


@pytest.fixture
def eleven_groups(tmp_path) -> Grouping:
    # Six groups on top of each other (identical results), the rest spread out.
    values = [(0.95, 0.05)] * 6 + [(0.9, 0.1), (0.92, 0.2), (0.94, 0.15), (0.96, 0.03), (0.91, 0.3)]
    return Grouping(["regularizer"], [fake_group(i, tmp_path, *v) for i, v in enumerate(values)])


def label_boxes(axes) -> list:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(axes.figure).get_renderer()
    axes.figure.draw(renderer)
    # Text's own extent: an Annotation's includes its leader line, which may cross a label.
    return [Text.get_window_extent(text, renderer) for text in axes.texts]


def test_accuracy_vs_ece_numbers_never_overlap_and_colours_are_colour_blind_safe(eleven_groups):
    figure = accuracy_vs_ece(eleven_groups)
    raw, calibrated = [a for a in figure.axes if a.get_title()]
    assert raw.get_title() == "raw softmax" and calibrated.get_title() == "after temperature scaling"
    for axes in (raw, calibrated):
        boxes = label_boxes(axes)
        assert [t.get_text() for t in axes.texts] == [str(n) for n in range(1, 12)]
        overlaps = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
        assert overlaps == []
    colours = [to_hex(line.get_color()) for line in figure.legends[0].get_lines()]
    assert colours[:8] == [c.lower() for c in OKABE_ITO] and colours[8] == OKABE_ITO[0].lower()
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend[0].startswith("1: label_smoothing") and legend[0].endswith("(2 seeds)")


def test_repel_moves_labels_of_identical_points_apart():
    offsets = repel_offsets([(100.0, 100.0)] * 4)
    placed = [(100 + dx, 100 + dy) for dx, dy in offsets]
    assert len(set(placed)) == 4
    assert all(abs(a[0] - b[0]) >= 9 or abs(a[1] - b[1]) >= 9 for i, a in enumerate(placed) for b in placed[:i])


def test_reliability_is_one_panel_per_group_with_its_smallest_bin(eleven_groups):
    figure = reliability(eleven_groups)
    titled = [a for a in figure.axes if a.get_title()]
    assert len(titled) == 11 and len(figure.axes) == 22  # a count strip under each diagram
    assert all(re.search(r"min bin 4$", a.get_title()) for a in titled)  # 2 predictions x 2 seeds
    assert to_hex(titled[0].patches[0].get_facecolor()) == "#bbbbbb"


# --- the report's TensorBoard event file ------------------------------------------------------

@pytest.mark.slow
def test_report_writes_tables_figures_and_hparams_columns_into_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "regularizer=none,label_smoothing", "seed=0,1", *SMALL,
                      "trainer.num_threads=1", "trainer.progress=false", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "0_regularizer=none,seed=0", "1_regularizer=none,seed=1",
        "2_regularizer=label_smoothing,seed=0", "3_regularizer=label_smoothing,seed=1", "report"]
    assert f"report:       python -m regbench.report {sweep}" in result.stdout
    assert f"see curves:   tensorboard --logdir {sweep}" in result.stdout
    make_report(sweep)
    report = events(sweep / "report")
    assert len(list((sweep / "report").glob("events.out.tfevents.*"))) == 1  # the sweep's one replaced
    assert set(report.Tags()["images"]) >= {"report/accuracy_vs_ece", "report/reliability"}
    assert {"report/summary/text_summary", "report/groups/text_summary"} <= set(plugin_tags(report, "text"))
    groups = report.Tensors("report/groups/text_summary")[0].tensor_proto.string_val[0].decode()
    assert groups.startswith("| settings | seeds | test acc")
    experiment = hparams_metadata.parse_experiment_plugin_data(
        plugin_tags(report, "hparams")[hparams_metadata.EXPERIMENT_TAG])
    differs = {info.name: info.differs for info in experiment.hparam_infos}
    assert differs["regularizer"] and differs["seed"] and differs[RUN_NAME_HPARAM]
    assert differs["regularizer.label_smoothing.epsilon"]  # a column for all, empty for none
    assert not differs["trainer.epochs"] and not differs["dataset.name"]
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAMS_METRICS)


# --- checkpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("keep, files", [("last", {"last.pt"}), ("none", set()), ("best", {"best.pt"})])
def test_keep_checkpoint_decides_what_a_completed_run_keeps(tmp_path, keep, files):
    import torch
    run_dir = tmp_path / keep
    metrics = train_in_process(run_dir, [*SMALL, "trainer.epochs=3", f"trainer.keep_checkpoint={keep}"])
    assert {p.name for p in run_dir.glob("*.pt")} == files
    if keep == "best":
        best = torch.load(run_dir / "best.pt", weights_only=True)
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        accuracies = [record["val/acc"] for record in history]
        assert best["epoch"] == accuracies.index(max(accuracies)) + 1
        assert best["value"] == max(accuracies) and "model" in best
    # A completed folder is recognized from spec.json + metrics.json, whatever was kept.
    assert train_in_process(run_dir, [*SMALL, "trainer.epochs=3", f"trainer.keep_checkpoint={keep}"]) == metrics


def test_keep_best_needs_a_validation_objective(tmp_path):
    from regbench.config import ConfigError
    with pytest.raises(ConfigError, match="trainer.keep_checkpoint='best' is not allowed"):
        train_in_process(tmp_path / "run", [*SMALL, "trainer.keep_checkpoint=best", "objective=test/acc"])
