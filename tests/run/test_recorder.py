"""What a run records for TensorBoard (run/recorder.py, run/tensorboard.py): the Custom Scalars layout
and its HParams session."""

from __future__ import annotations

import pytest
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import events, plugin_tags, train_in_process
from regbench.run.tensorboard import RUN_NAME_HPARAM, SCALARS_LAYOUT

SMALL = ["trainer.epochs=2", "model.hidden_sizes=[16]"]


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
