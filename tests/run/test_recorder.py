"""What a run records for TensorBoard (run/recorder.py, run/tensorboard.py): the Custom Scalars
layout and its HParams session."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import events, plugin_tags, train_in_process
from regbench.run.tensorboard import (
    GROUPS_CATEGORY,
    RUN_NAME_HPARAM,
    SCALARS_LAYOUT,
    custom_scalars_layout,
    hparams_values,
    trial_name,
)

SMALL = ["trainer.epochs=2", "model.hidden_sizes=[16]"]


def layout_of(summary) -> layout_pb2.Layout:
    layout = layout_pb2.Layout()
    layout.ParseFromString(summary.value[0].tensor.string_val[0])
    return layout


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
    start = hparams_metadata.parse_session_start_info_plugin_data(
        tags[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["seed"].string_value == "0"  # shown as 0, not 0.0000
    assert start.hparams["trainer.epochs"].string_value == "2"
    assert start.hparams["regularizer.label_smoothing.epsilon"].number_value == pytest.approx(0.1)
    assert RUN_NAME_HPARAM not in start.hparams  # the name went into the trial id
    # The folder says nothing ("run"): the trial is named by the run's name, then its folder.
    assert start.group_name.startswith("label_smoothing | mlp on digits | seed 0 (")
    assert start.group_name.endswith(f"{tmp_path / 'run'})")
    end = hparams_metadata.parse_session_end_info_plugin_data(
        tags[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS
    assert run.Scalars("test/acc")[0].step == 2


def test_a_sweep_job_leaves_the_first_custom_scalars_category_to_the_groups():
    layout = layout_of(custom_scalars_layout(groups_first=True))
    titles = [GROUPS_CATEGORY] + [title for title, _, _ in SCALARS_LAYOUT]
    assert [c.title for c in layout.category] == titles
    assert not layout.category[0].chart and not layout.category[0].closed


@pytest.mark.parametrize("folder,expected", [
    ("3_regularizer=label_smoothing,seed=1", "label_smoothing,seed=1"),
    ("12_regularizer.dropout.p=0.3,seed=0", "dropout.p=0.3,seed=0"),
    ("16-04-01-123456_regularizer=dropout,trainer.epochs=5", "dropout,trainer.epochs=5"),
    ("16-04-01_model.hidden_sizes=64+64", "model.hidden_sizes=64+64"),
    ("16-04-01", "none | mlp on digits | seed 0"),  # a single run without overrides
    ("7", "none | mlp on digits | seed 0"),  # a sweep job that sweeps nothing
])
def test_trial_ids_start_with_what_the_run_changed_and_end_with_its_folder(tmp_path, monkeypatch,
                                                                           folder, expected):
    monkeypatch.chdir(tmp_path)
    run_dir = Path("outputs", "multirun", "2026-12-03", folder)
    assert trial_name(run_dir, "none | mlp on digits | seed 0") == f"{expected} ({run_dir})"


def test_hparams_values_show_integers_as_text_and_keep_floats_and_flags():
    values = hparams_values({"trainer.epochs": 8, "optimizer.lr": 0.1, "trainer.compile": False,
                             "model.hidden_sizes": [64, 64], "dataset.classes": None}, 3, "x")
    assert values == {RUN_NAME_HPARAM: "x", "trainer.epochs": "8", "optimizer.lr": 0.1,
                      "trainer.compile": False, "model.hidden_sizes": "[64, 64]",
                      "dataset.classes": "None", "seed": "3"}
