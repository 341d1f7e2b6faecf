"""The TensorBoard protocol regbench writes beyond scalars: the HParams tab's rows and columns, and
the Custom Scalars layout. Shared by the run's recorder (its own row) and the report (the sweep's
columns)."""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from regbench.run.spec import (GAP_ACC, GAP_NLL, SEED_KEY, TEST_ACC, TEST_ECE, TEST_ECE_TEMPERATURE,
                               TEST_MEAN_CONFIDENCE, TEST_NLL)

# The HParams column holding a run's readable name ("label_smoothing | mlp on digits | seed 0"):
# TensorBoard's trial id is the run's folder, cut short in its table.
RUN_NAME_HPARAM = "run"
# The metric columns of the HParams table, in this order.
HPARAMS_METRICS = (TEST_ACC, TEST_NLL, TEST_ECE, TEST_ECE_TEMPERATURE, TEST_MEAN_CONFIDENCE, GAP_ACC,
                   GAP_NLL, "val/acc")


def hparams_values(experiment_settings: Mapping[str, Any], seed: Any, name: str) -> dict[str, Any]:
    """One run's HParams row: its display name, its experiment settings and seed, as the numbers,
    strings and booleans TensorBoard takes (lists and None as text)."""
    values = {RUN_NAME_HPARAM: name, **experiment_settings, SEED_KEY: seed}
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in values.items()}


def hparam_type(values: list[Any]) -> int:
    if all(isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_BOOL
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def hparams_experiment(rows: Iterable[Mapping[str, Any]], metrics: Iterable[str] = HPARAMS_METRICS) -> Summary:
    """The HParams tab's columns for a sweep: every setting any run has (so each regularizer's
    coefficients are a column for all runs, empty where not selected), marked ``differs`` when
    it varies, and the metric columns. TensorBoard lists differing columns first (then by name),
    so what varies (regularizer, its coefficients, seed) comes before the constant settings. Only
    one such summary may be in a logdir: TensorBoard uses the first it finds, so runs write none
    (their columns are then computed from all runs) and the sweep writes this one."""
    rows = list(rows)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    infos = []
    for key in keys:
        values = [row[key] for row in rows if key in row]
        differs = len({json.dumps(v) for v in values}) > 1 or len(values) < len(rows)
        infos.append(api_pb2.HParamInfo(name=key, type=hparam_type(values), differs=differs))
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=[
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics])
    content = hparams_metadata.create_summary_metadata(
        hparams_metadata.plugin_data_pb2.HParamsPluginData(experiment=experiment))
    return Summary(value=[Summary.Value(tag=hparams_metadata.EXPERIMENT_TAG, metadata=content)])


# Custom Scalars: one chart per quantity overlays every run (a regex matches the tag in all runs).
# The closed category keeps the end-of-run values (test/, gap/) off the first screen.
SCALARS_LAYOUT = (
    ("validation", False, (("accuracy", "val/acc$"), ("ECE (fraction)", "val/ece$"),
                           ("mean confidence", "val/mean_confidence$"), ("NLL", "val/nll$"))),
    ("training", False, (("objective train/loss", "train/loss$"),
                         ("loss terms train/loss_*", "train/loss_.*"),
                         ("accuracy (training batches)", "train/acc$"), ("learning rate", "^lr$"))),
    ("end of run (test split, gaps)", True, (("test accuracy", "test/acc$"),
                                             ("test ECE raw and calibrated", "test/ece(@.*)?$"),
                                             ("generalization gaps", "gap/.*"))),
)


def custom_scalars_layout() -> Summary:
    """SCALARS_LAYOUT as the Custom Scalars plugin's layout summary. torch's
    SummaryWriter.add_custom_scalars cannot mark a category closed, hence this."""
    layout = layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, closed=closed, chart=[
            layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
            for name, regex in charts])
        for title, closed, charts in SCALARS_LAYOUT])
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()],
                         tensor_shape=TensorShapeProto())
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    return Summary(value=[Summary.Value(tag="custom_scalars__config__", tensor=tensor, metadata=metadata)])
