"""Jobs grouped by their experiment settings (runs that differ only in their seed), and the one set
of number helpers every part of the report uses on a group's metrics: the finite-number filter,
mean and sample standard deviation over seeds, and the "m ± s" cell."""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from regbench.report.jobs import Job
from regbench.run.spec import DID_NOT_LEARN, REGULARIZER_KEY, canonical

# A setting some jobs do not have (label_smoothing's epsilon in a regularizer=none job).
ABSENT = object()


def setting_key(value: Any) -> str:
    """A hashable, order-stable form of a setting, absent ones included."""
    return "<absent>" if value is ABSENT else canonical(value)


def show(value: Any) -> str:
    """A setting as a user would type it on the command line."""
    if value is ABSENT:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def is_regularizer_key(key: str) -> bool:
    return key == REGULARIZER_KEY or key.startswith(f"{REGULARIZER_KEY}.")


@dataclass
class Group:
    label: str
    settings: dict[str, Any]  # the varying settings of this group
    jobs: list[Job]

    @property
    def completed(self) -> list[Job]:
        return [job for job in self.jobs if job.completed]


@dataclass
class Grouping:
    varying: list[str]  # every setting that differs between jobs ("regularizer" first)
    groups: list[Group]


def full_settings(group: Group) -> dict[str, Any]:
    """Every comparable setting of the group (constant ones included), from its first job."""
    return group.jobs[0].settings or {}


def varying_keys(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """Settings that differ between jobs, missing ones included; "regularizer" first."""
    keys = sorted({key for one in settings for key in one})
    varying = [key for key in keys
               if len({setting_key(one.get(key, ABSENT)) for one in settings}) > 1]
    return sorted(varying, key=lambda key: (key != REGULARIZER_KEY, key))


def label_keys(settings: Sequence[Mapping[str, Any]], varying: Sequence[str]) -> list[str]:
    """The varying keys worth showing: those with two different values somewhere. A key that is
    only present or absent (regularizer.label_smoothing.epsilon next to regularizer=none) follows
    from another varying key and would only repeat it."""
    return [key for key in varying
            if len({setting_key(one[key]) for one in settings if key in one}) > 1]


def make_label(regularizer: str, values: Mapping[str, Any], keys: Iterable[str]) -> str:
    parts = [regularizer] + [f"{key}={show(values.get(key, ABSENT))}" for key in keys
                             if key != REGULARIZER_KEY and key in values]
    return ", ".join(parts)


def group_jobs(jobs: Sequence[Job]) -> Grouping:
    """Jobs with the same settings, seed aside, in the order of their first job."""
    readable = [job for job in jobs if job.settings is not None]
    all_settings = [job.settings for job in readable]
    varying = varying_keys(all_settings)
    buckets: dict[tuple, list[Job]] = {}
    for job in readable:
        buckets.setdefault(tuple(setting_key(job.settings.get(k, ABSENT)) for k in varying), []).append(job)
    shown = label_keys(all_settings, varying)
    labels = [make_label(members[0].settings[REGULARIZER_KEY], members[0].settings, shown)
              for members in buckets.values()]
    if len(set(labels)) < len(labels):  # rare: only presence tells groups apart; show everything
        labels = [make_label(members[0].settings[REGULARIZER_KEY], members[0].settings, varying)
                  for members in buckets.values()]
    groups = [Group(label, {k: members[0].settings.get(k, ABSENT) for k in varying}, members)
              for label, members in zip(labels, buckets.values())]
    return Grouping(varying, groups)


# --- numbers of a group's runs ------------------------------------------------------------------

def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(values: Iterable[Any]) -> list[float]:
    """The finite numbers among ``values`` (missing, null, non-numeric, NaN and inf left out)."""
    return [float(v) for v in values if is_number(v) and math.isfinite(v)]


def finite_values(jobs: Iterable[Job], key: str) -> list[float]:
    """The finite values of ``key`` in the jobs' metrics.json."""
    return finite(job.metrics.get(key) for job in jobs)


def metric_value(job: Job, key: str) -> Optional[float]:
    """One job's value of ``key``, or None when it is not a finite number."""
    value = job.metrics.get(key)
    return float(value) if is_number(value) and math.isfinite(value) else None


def did_not_learn(group: Group) -> str:
    """"3/5 runs did not learn" when completed runs' metrics.json say so (``spec.DID_NOT_LEARN``:
    final training accuracy near chance); "" otherwise, and for older runs without the key."""
    done = group.completed
    count = sum(job.metrics.get(DID_NOT_LEARN) is True for job in done)
    return f"{count}/{len(done)} runs did not learn" if count else ""


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1: seeds are a sample); std 0 for one value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_number(value: float, spec: str) -> str:
    """``value`` in the format ``spec``; a nonzero value that would show as zero at a fixed-point
    spec's precision as "< 0.0001" (or "> -0.0001"), never as "0.0000"."""
    text = f"{value:{spec}}"
    digits = re.fullmatch(r".*\.(\d+)f", spec)
    if value == 0 or not digits or float(text) != 0:
        return text
    smallest = f"{10.0 ** -int(digits.group(1)):.{digits.group(1)}f}"
    return f"< {smallest}" if value > 0 else f"> -{smallest}"


def format_mean_std(values: Sequence[float], spec: str, runs: int) -> str:
    """"m ± s" over seeds; just "m" for one seed; "–" for none; "(n=k)" when some runs lack it.
    Nonzero numbers below the spec's precision show as "< 0.0001" (format_number), and a mean
    and spread both below it as "< 0.0001" alone."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    text, spread = format_number(mean, spec), format_number(std, spec)
    if len(values) > 1 and not (text.startswith(("<", ">")) and spread.startswith("<")):
        text += f" ± {spread}"
    return text if len(values) == runs else f"{text} (n={len(values)})"
