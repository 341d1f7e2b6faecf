"""The report's groups in TensorBoard (report/events.py, run/tensorboard.py): one run per group
whose curves are the mean, lowest and highest seed of every per-epoch scalar, named by what the
group varies, with the Custom Scalars margin charts that draw them; and the HParams columns."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import events
from regbench.report.events import GROUPS_DIR, MAX_GROUP_NAME, group_runs, write_report_events
from regbench.report.jobs import Job
from regbench.run.tensorboard import (
    GROUP_CHARTS,
    GROUPS_CATEGORY,
    HPARAMS_METRICS,
    TICKED_COLUMNS,
    bound_tags,
    hparams_experiment,
    hparams_values,
    mean_tag,
)

PORTABLE = re.compile(r"^[A-Za-z0-9._=,+-]+$")
BASE = {"dataset.name": "digits", "trainer.epochs": 3}
NONE = {"regularizer": "none"}


def job(folder: Path, settings: dict, seed: int, history: list[dict],
        status: str = "completed") -> Job:
    folder.mkdir(parents=True)
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return Job(folder.name, folder, status, {**BASE, **settings}, seed)


def history(acc: list[float], loss: list[float]) -> list[dict]:
    return [{"epoch": e + 1, "val/acc": a, "train/loss": l, "lr": 0.1, "seconds": 0.5,
             "did_not_learn": False} for e, (a, l) in enumerate(zip(acc, loss))]


@pytest.fixture
def sweep(tmp_path) -> tuple[Path, list[Job]]:
    jobs = [
        job(tmp_path / "0_none_0", NONE, 0, history([0.5, 0.7, 0.8], [2.0, 1.0, 0.5])),
        job(tmp_path / "1_none_1", NONE, 1, history([0.6, 0.8, 0.9], [1.5, 0.8, 0.4])),
        job(tmp_path / "2_none_2", NONE, 2, history([0.1, 0.9, 0.7], [1.0, 0.9, 0.3])),
        job(tmp_path / "3_ls_0", {"regularizer": "label_smoothing",
                                  "regularizer.label_smoothing.epsilon": 0.1}, 0,
            history([0.55, 0.75, float("nan")], [2.1, 1.1, 0.6])),
        job(tmp_path / "4_ls_1", {"regularizer": "label_smoothing",
                                  "regularizer.label_smoothing.epsilon": 0.1}, 1,
            history([0.65, 0.85, 0.95], [1.9, 0.9, 0.7])),
        # A failed seed is not part of its group's curves.
        job(tmp_path / "5_ls_2", {"regularizer": "label_smoothing",
                                  "regularizer.label_smoothing.epsilon": 0.1}, 2,
            history([0.0], [9.0]), status="failed"),
    ]
    with (tmp_path / "4_ls_1" / "history.jsonl").open("a") as file:  # hand-edited lines
        for line in ({"val/acc": 0.0}, {"epoch": "4", "val/acc": 0.0}):
            file.write(json.dumps(line) + "\n")
    return tmp_path, jobs


def test_group_runs_hold_the_mean_lowest_and_highest_seed_of_every_epoch_scalar(sweep):
    folder, jobs = sweep
    write_report_events(folder, jobs, {}, {})
    groups = folder / "report" / GROUPS_DIR
    assert sorted(path.name for path in groups.iterdir()) == ["label_smoothing", "none"]
    none = events(groups / "none")
    seeds = [[0.5, 0.7, 0.8], [0.6, 0.8, 0.9], [0.1, 0.9, 0.7]]  # epoch 1: mean 0.4, median 0.5
    low, high = bound_tags("val/acc")
    for epoch, values in enumerate(zip(*seeds), start=1):
        assert none.Scalars(mean_tag("val/acc"))[epoch - 1].step == epoch
        mean = statistics.fmean(values)
        assert none.Scalars(mean_tag("val/acc"))[epoch - 1].value == pytest.approx(mean)
        assert none.Scalars(low)[epoch - 1].value == pytest.approx(min(values))
        assert none.Scalars(high)[epoch - 1].value == pytest.approx(max(values))
    assert [s.value for s in none.Scalars(mean_tag("train/loss"))] == pytest.approx([1.5, 0.9, 0.4])
    assert mean_tag("lr") not in none.Tags()["scalars"]  # a setting, the same for every seed
    assert not any("seconds" in tag or "did_not_learn" in tag for tag in none.Tags()["scalars"])
    smoothing = events(groups / "label_smoothing")
    # The failed seed is left out; a NaN leaves its epoch to the seeds that have a number.
    means = [s.value for s in smoothing.Scalars(mean_tag("val/acc"))]
    assert means == pytest.approx([0.6, 0.8, 0.95])
    assert [s.value for s in smoothing.Scalars(low)] == pytest.approx([0.55, 0.75, 0.95])
    # The seed runs have none of these tags: only the group runs are drawn in the margin charts.
    assert mean_tag("val/acc").split("/")[0] != "val" and low.split("/")[0] != "val"


def test_the_report_run_lays_out_one_margin_chart_per_quantity_for_the_groups(sweep):
    folder, jobs = sweep
    report = events(write_report_events(folder, jobs, {}, {}))
    layout = layout_pb2.Layout()
    layout.ParseFromString(report.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    (category,) = layout.category
    assert category.title == GROUPS_CATEGORY
    series = {chart.title: chart.margin.series[0] for chart in category.chart}
    assert list(series)[::-1] == [title for title, _ in GROUP_CHARTS]  # shown last to first
    accuracy = series["validation accuracy"]
    assert (accuracy.value, accuracy.lower, accuracy.upper) == (mean_tag("val/acc"),
                                                                *bound_tags("val/acc"))


def test_a_new_report_replaces_the_group_runs_of_the_last_one(sweep):
    folder, jobs = sweep
    write_report_events(folder, jobs, {}, {})
    write_report_events(folder, jobs[:3], {}, {})  # label_smoothing's jobs gone
    groups = folder / "report" / GROUPS_DIR
    assert [path.name for path in groups.iterdir()] == ["none"]
    assert len(list((groups / "none").iterdir())) == 1  # one event file, not one per report
    assert not [p for p in (folder / "report").iterdir() if p.name.startswith(".")]  # no leftovers
    write_report_events(folder, jobs[5:], {}, {})  # no completed job: no group run at all
    assert not groups.exists()


def named(tmp_path: Path, settings: list[dict]) -> list[str]:
    jobs = [Job(str(i), tmp_path / str(i), "completed", {**BASE, **one}, 0)
            for i, one in enumerate(settings)]
    return list(group_runs(jobs))


@pytest.mark.parametrize("settings,names", [
    ([{"regularizer": "none"}, {"regularizer": "dropout", "regularizer.dropout.p": 0.5}],
     ["none", "dropout"]),
    ([{"regularizer": "dropout", "regularizer.dropout.p": 0.1},
      {"regularizer": "dropout", "regularizer.dropout.p": 0.3}],
     ["dropout.p=0.1", "dropout.p=0.3"]),
    ([{"regularizer": "none"}, {"regularizer": "dropout", "regularizer.dropout.p": 0.1},
      {"regularizer": "dropout", "regularizer.dropout.p": 0.3}],
     ["none", "dropout.p=0.1", "dropout.p=0.3"]),
    ([{"regularizer": "none", "optimizer.lr": 0.1}, {"regularizer": "none", "optimizer.lr": 0.05}],
     ["none,optimizer.lr=0.1", "none,optimizer.lr=0.05"]),
    ([{"regularizer": "none", "model.hidden_sizes": [64, 64]},
      {"regularizer": "none", "model.hidden_sizes": [16]}],
     ["none,model.hidden_sizes=64+64", "none,model.hidden_sizes=16"]),
    # The combination's second regularizer has no setting swept: its name stays.
    ([{"regularizer": "dropout+mixup", "regularizer.dropout.p": 0.1},
      {"regularizer": "dropout+mixup", "regularizer.dropout.p": 0.2}],
     ["dropout+mixup,dropout.p=0.1", "dropout+mixup,dropout.p=0.2"]),
])
def test_group_runs_are_named_by_what_the_group_varies(tmp_path, settings, names):
    assert named(tmp_path, settings) == names


def test_group_run_names_are_short_filesystem_safe_and_unique(tmp_path):
    long_key = "regularizer.label_smoothing.epsilon_for_a_very_long_experiment_name"
    names = named(tmp_path, [
        {"regularizer": "label_smoothing", long_key: "a/b c*" + "x" * 60},
        {"regularizer": "label_smoothing", long_key: "a/b c*" + "x" * 61},
        {"regularizer": "label_smoothing", long_key: "a/b?c*" + "x" * 60},
    ])
    assert len(set(names)) == 3
    assert all(len(name) <= MAX_GROUP_NAME and PORTABLE.match(name) for name in names)
    # Two values that only differ in characters a folder name cannot hold stay apart.
    assert named(tmp_path, [{"regularizer": "none", "dataset.root": "a/b"},
                            {"regularizer": "none", "dataset.root": "a?b"}]) == [
        "none,dataset.root=a_b", "none,dataset.root=a_b-2"]


def experiment_of(rows) -> api_pb2.Experiment:
    summary = hparams_experiment(rows)
    content = summary.value[0].metadata.plugin_data.content
    return hparams_metadata.parse_experiment_plugin_data(content)


def test_hparams_columns_are_what_varies_when_fewer_than_five_settings_vary():
    smoothing = {"regularizer": "label_smoothing", "regularizer.label_smoothing.epsilon": 0.1}
    rows = [hparams_values({**BASE, **settings}, seed, "x")
            for settings in (NONE, smoothing) for seed in (0, 1)]
    experiment = experiment_of(rows)
    columns = {info.name: info for info in experiment.hparam_infos}
    assert list(columns) == ["regularizer", "seed"] and all(i.differs for i in columns.values())
    assert columns["seed"].type == api_pb2.DATA_TYPE_STRING  # integers shown as 0, 1
    assert [v.string_value for v in columns["seed"].domain_discrete.values] == ["0", "1"]
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert metrics == list(HPARAMS_METRICS)
    assert metrics[:TICKED_COLUMNS] == ["test/acc", "test/nll", "test/ece", "test/ece@temperature",
                                        "test/mean_confidence"]  # the five TensorBoard ticks
    assert experiment.metric_infos[3].display_name == "test ECE after temperature scaling"


def test_hparams_lists_constant_settings_unticked_once_five_settings_vary():
    rows = [hparams_values({**BASE, "regularizer": "dropout", "regularizer.dropout.p": p,
                            "optimizer.lr": lr, "model.width": width}, seed, "x")
            for p, lr, width, seed in [(0.1, 0.1, 8, 0), (0.3, 0.05, 16, 1), (0.3, 0.1, 16, 2)]]
    infos = experiment_of(rows).hparam_infos
    varying = {"regularizer.dropout.p", "optimizer.lr", "model.width", "seed"}
    assert {i.name for i in infos} == varying  # four vary: the constants would be ticked
    rows = [{**row, "trainer.epochs": str(seed + 3)} for seed, row in enumerate(rows)]  # five vary
    infos = experiment_of(rows).hparam_infos
    assert {i.name for i in infos if i.differs} == varying | {"trainer.epochs"}
    assert {i.name for i in infos if not i.differs} == {"dataset.name", "regularizer"}
