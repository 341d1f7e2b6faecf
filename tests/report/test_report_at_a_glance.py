"""The report's plots for many groups and its TensorBoard event file: what a person reads at a glance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from matplotlib.text import Text
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import events, plugin_tags, run_cli
from regbench.report.command import make_report
from regbench.report.groups import Group, Grouping
from regbench.report.jobs import Job
from regbench.report.plots import OKABE_ITO, accuracy_vs_ece, reliability, repel_offsets
from regbench.run.tensorboard import HPARAMS_METRICS

SMALL = ["trainer.epochs=2", "model.hidden_sizes=[16]"]


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
    # What varies, and only that: TensorBoard ticks the first five columns, so constant ones
    # (trainer.epochs, dataset.name) and epsilon, there only with label_smoothing, are left out.
    assert {info.name: info.differs for info in experiment.hparam_infos} == {
        "regularizer": True, "seed": True}
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAMS_METRICS)
    assert sorted((sweep / "report" / "groups").iterdir()) == [
        sweep / "report" / "groups" / "label_smoothing", sweep / "report" / "groups" / "none"]
