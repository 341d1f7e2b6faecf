"""The TensorBoard protocol regbench writes beyond scalars: the HParams tab's sessions and columns,
the Custom Scalars layout, and the names of the report's per-group curves. Shared by the run's
recorder (its own session) and the report (the sweep's columns and its groups).

What TensorBoard 2.x's HParams tab does with them (tf-hparams-query-pane, backend_context): the
columns are sorted ``differs`` first, then by name, and the first five setting columns and the
first five metric columns are ticked (shown); no flag ticks or unticks a single column. Numbers are
shown with five significant digits (``0.0000`` for a seed 0), strings as they are. A row's "Trial
ID" is its session's ``group_name``, or the run's folder relative to the logdir, cut to 10em."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from google.protobuf import struct_pb2
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from regbench.run.spec import (
    GAP_ACC,
    GAP_NLL,
    REGULARIZER_KEY,
    SEED_KEY,
    TEST_ACC,
    TEST_ECE,
    TEST_ECE_TEMPERATURE,
    TEST_MEAN_CONFIDENCE,
    TEST_NLL,
)

# The run's readable name ("label_smoothing | mlp on digits | seed 0") travels from hparams_values
# to log_hparams under this key and names the trial when its folder name says nothing; no column.
RUN_NAME_HPARAM = "run"
# The metric columns of the HParams table, in this order: the first five are ticked.
HPARAMS_METRICS = (TEST_ACC, TEST_NLL, TEST_ECE, TEST_ECE_TEMPERATURE, TEST_MEAN_CONFIDENCE,
                   GAP_ACC, GAP_NLL, "val/acc")
METRIC_DISPLAY_NAMES = {
    TEST_ACC: "test acc", TEST_NLL: "test NLL", TEST_ECE: "test ECE",
    TEST_ECE_TEMPERATURE: "test ECE after temperature scaling",
    TEST_MEAN_CONFIDENCE: "test mean confidence", GAP_ACC: "gap acc (train - test)",
    GAP_NLL: "gap NLL (test - train)", "val/acc": "val acc (last epoch)"}
# TensorBoard ticks this many setting columns (the first after sorting), and as many metrics.
TICKED_COLUMNS = 5


def hparam_value(value: Any) -> Any:
    """A setting as TensorBoard's HParams takes it: integers as text, so a seed shows as ``1``
    and not ``1.0000`` (their columns become lists of values to tick, which suits seeds and
    sizes); floats, strings and booleans as they are; lists and None as text."""
    return value if isinstance(value, (float, str, bool)) else str(value)


def hparams_values(experiment_settings: Mapping[str, Any], seed: Any, name: str) -> dict[str, Any]:
    """One run's HParams row: its experiment settings and seed (``hparam_value``), and its
    display name under RUN_NAME_HPARAM for the trial id."""
    values = {RUN_NAME_HPARAM: name, **experiment_settings, SEED_KEY: seed}
    return {key: hparam_value(value) for key, value in values.items()}


def epoch_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one history.jsonl record that TensorBoard gets, by tag: its numbers, except
    the epoch (the step) and the timings."""
    return {key: value for key, value in record.items()
            if key != "epoch" and not key.endswith("seconds") and not isinstance(value, bool)
            and isinstance(value, (int, float))}


def short_setting(key: str, value: str) -> str:
    """``regularizer=dropout`` -> ``dropout``; ``regularizer.dropout.p=0.3`` -> ``dropout.p=0.3``;
    other settings as ``key=value``."""
    if key == REGULARIZER_KEY:
        return value
    return f"{key.removeprefix(f'{REGULARIZER_KEY}.')}={value}"


# A run folder's leading job number (sweep) or time (single run, hydra.run.dir's default).
FOLDER_PREFIX = re.compile(r"^(\d+|\d\d-\d\d-\d\d(-\d+)?)(_|$)")


def trial_name(run_dir: Path, name: str) -> str:
    """The HParams row's Trial ID: what the run changed, from its folder name
    (``3_regularizer=label_smoothing,seed=1`` -> ``label_smoothing,seed=1``; the run's name when
    the folder names no override), then its folder, which keeps trials of different sweeps apart
    (TensorBoard merges sessions of one name into one row)."""
    overrides = FOLDER_PREFIX.sub("", run_dir.name)
    parts = [short_setting(*part.partition("=")[::2]) if "=" in part else part
             for part in overrides.split(",") if part]
    readable = ",".join(parts) if "=" in overrides else name
    folder = run_dir.resolve()
    try:
        folder = folder.relative_to(Path.cwd().resolve())
    except ValueError:  # outside the working directory: the whole path
        pass
    return f"{readable} ({folder})"


def session_summaries(values: Mapping[str, Any], trial: str) -> tuple[Summary, Summary]:
    """The run's HParams session (start: its settings, named ``trial``; end: success).
    torch's ``hparams`` cannot name the session group, hence these by hand."""
    start = plugin_data_pb2.SessionStartInfo(group_name=trial, start_time_secs=time.time())
    for key, value in values.items():
        if isinstance(value, bool):
            start.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[key].number_value = value
        else:
            start.hparams[key].string_value = str(value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return (hparams_summary(hparams_metadata.SESSION_START_INFO_TAG,
                            plugin_data_pb2.HParamsPluginData(session_start_info=start)),
            hparams_summary(hparams_metadata.SESSION_END_INFO_TAG,
                            plugin_data_pb2.HParamsPluginData(session_end_info=end)))


def hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    content = hparams_metadata.create_summary_metadata(data)
    return Summary(value=[Summary.Value(tag=tag, metadata=content)])


def hparam_type(values: list[Any]) -> int:
    if all(isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_BOOL
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def hparam_info(key: str, values: list[Any]) -> api_pb2.HParamInfo:
    """One setting's column: ``differs`` when the runs that have it hold two different values. A
    setting that is only present or absent (dropout's seven settings next to regularizer=none)
    follows from the regularizer column, as in the report's group labels (report.groups.label_keys).
    Text and boolean columns list their values (the tab's tick boxes to filter rows)."""
    differs = len({json.dumps(v) for v in values}) > 1
    info = api_pb2.HParamInfo(name=key, type=hparam_type(values), differs=differs)
    domain = info.domain_discrete.values
    if info.type == api_pb2.DATA_TYPE_STRING:
        domain.extend(struct_pb2.Value(string_value=v)
                      for v in sorted(set(map(str, values)), key=natural))
    elif info.type == api_pb2.DATA_TYPE_BOOL:
        domain.extend(struct_pb2.Value(bool_value=v) for v in sorted(set(values)))
    return info


def natural(text: str) -> tuple:
    """Sort key putting ``2`` before ``10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", text))


def hparams_experiment(rows: Iterable[Mapping[str, Any]],
                       metrics: Iterable[str] = HPARAMS_METRICS) -> Summary:
    """The HParams tab's columns for a sweep: every setting that varies (``hparam_info``: the
    regularizer, a coefficient swept, the seed; a coefficient's column is empty for the runs
    without it) marked ``differs``, so TensorBoard lists and ticks them first; the other settings
    only when at least five vary, since TensorBoard always ticks the first five columns and would
    otherwise tick constant ones (the report's text and each run's spec.json hold them); and the
    metric columns with readable names, the five headline metrics first. Only one such summary may
    be in a logdir: TensorBoard uses the first it finds, so runs write none (their columns are
    then computed from all runs) and the sweep writes this one."""
    rows = [{key: value for key, value in row.items() if key != RUN_NAME_HPARAM} for row in rows]
    keys = list(dict.fromkeys(key for row in rows for key in row))
    infos = [hparam_info(key, [row[key] for row in rows if key in row]) for key in keys]
    varying = [info for info in infos if info.differs]
    shown = varying if len(varying) < TICKED_COLUMNS else infos
    experiment = api_pb2.Experiment(hparam_infos=shown, metric_infos=[
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag),
                           display_name=METRIC_DISPLAY_NAMES.get(tag, ""))
        for tag in metrics])
    return hparams_summary(hparams_metadata.EXPERIMENT_TAG,
                           plugin_data_pb2.HParamsPluginData(experiment=experiment))


# --- the report's group runs: one TensorBoard run per group, the mean over its seeds -------------

# Tag prefixes of a group run's curves: ``across_seeds/<tag>`` is the mean over the group's seeds of
# a run's per-epoch ``<tag>``, ``seed_range/<tag>/min`` and ``/max`` its spread. Not ``<tag>``
# itself: a Custom Scalars margin chart warns about every run that has its value tag but not the
# bounds, which every seed run would. Time Series sorts tag groups by name and opens the first two:
# "across_seeds" comes before every tag group a run writes (gap, lr, temperature, test, train,
# val), "seed_range" after most.
MEAN_PREFIX = "across_seeds"
RANGE_PREFIX = "seed_range"


def mean_tag(tag: str) -> str:
    return f"{MEAN_PREFIX}/{tag}"


def bound_tags(tag: str) -> tuple[str, str]:
    return f"{RANGE_PREFIX}/{tag}/min", f"{RANGE_PREFIX}/{tag}/max"


# Custom Scalars. The first category holds the groups' margin charts (one line per group, its
# band from the lowest to the highest seed): sweep jobs write it empty and first, so the report's
# charts, merged into it by title, come before the seed runs' charts (TensorBoard merges the
# layouts of all runs in the order of their names, and the report's runs come after the jobs').
GROUPS_CATEGORY = "mean over seeds per group, band from the lowest to the highest seed"
GROUP_CHARTS = (("validation accuracy", "val/acc"), ("validation ECE (fraction)", "val/ece"),
                ("validation NLL", "val/nll"),
                ("validation mean confidence", "val/mean_confidence"),
                ("objective train/loss", "train/loss"),
                ("accuracy (training batches)", "train/acc"))
# The seed runs' charts: one per quantity overlays every run (a regex matches the tag in all runs;
# TensorBoard matches it at the start of the tag, so the groups' across_seeds/ and seed_range/ tags
# stay out). The closed category keeps the end-of-run values (test/, gap/) off the first screen.
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


def custom_scalars_layout(groups_first: bool = False) -> Summary:
    """A run's Custom Scalars layout (SCALARS_LAYOUT), after an empty GROUPS_CATEGORY when
    ``groups_first`` (a sweep job). torch's SummaryWriter.add_custom_scalars cannot mark a
    category closed, hence this."""
    categories = [layout_pb2.Category(title=title, closed=closed, chart=[
        layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
        for name, regex in charts]) for title, closed, charts in SCALARS_LAYOUT]
    if groups_first:
        categories.insert(0, layout_pb2.Category(title=GROUPS_CATEGORY))
    return layout_summary(layout_pb2.Layout(category=categories))


def groups_layout() -> Summary:
    """The report's Custom Scalars category: one margin chart per GROUP_CHARTS quantity, drawn for
    the runs that have its mean and bounds (the group runs). Listed last to first: TensorBoard
    2.21's dashboard shows a category's margin charts in the reverse of their layout order (its
    multiline charts in order), seen in Chromium with scripts/screenshot_tensorboard.py."""
    charts = [layout_pb2.Chart(title=title, margin=layout_pb2.MarginChartContent(series=[
        layout_pb2.MarginChartContent.Series(value=mean_tag(tag), lower=bound_tags(tag)[0],
                                             upper=bound_tags(tag)[1])]))
        for title, tag in reversed(GROUP_CHARTS)]
    return layout_summary(layout_pb2.Layout(category=[
        layout_pb2.Category(title=GROUPS_CATEGORY, chart=charts)]))


def layout_summary(layout: layout_pb2.Layout) -> Summary:
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()],
                         tensor_shape=TensorShapeProto())
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    return Summary(value=[Summary.Value(tag="custom_scalars__config__", tensor=tensor,
                                        metadata=metadata)])
