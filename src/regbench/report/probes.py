"""Report pieces for the probes of run/probes.py, each drawn only when the sweep has what it needs.

- ``train_loss.png``: the training-loss curves (history.jsonl, mean over seeds) of every group in
  one plot, when the groups differ in ``dataset.corruption`` (Zhang et al. 2017, Fig. 1a), with a
  table of train/test accuracy and the time to fit (``fit/epoch``, Fig. 1b).
- Variance shift: test accuracy next to ``test/variance_shift_max``/``_mean`` per group, when any
  run recorded them (Li et al. 2019; experiment=dropout_bn).
- Effective learning rate: per group the mean ``train/effective_lr`` over the epochs, the final
  ``train/bn_weight_norm`` and test accuracy, sorted by effective lr, and ``effective_lr.png``
  (test accuracy against mean effective lr), when the runs logged it and the groups differ in lr
  or L2 coefficient (experiment=l2_batchnorm).

Their tables show "m ± s" over seeds even for one seed (a std of 0) and "—" where no run has the
value (the group table's ``format_mean_std`` shows "m" and "–").
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from regbench.report.groups import Group, finite, finite_values, mean_std
from regbench.report.outputs import EFFECTIVE_LR_PNG, TRAIN_LOSS_PNG
from regbench.run.folder import RunFolder
from regbench.run.spec import (
    BN_WEIGHT_NORM,
    EFFECTIVE_LR,
    FIT_EPOCH,
    TEST_ACC,
    VARIANCE_SHIFT_MAX,
    VARIANCE_SHIFT_MEAN,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CORRUPTION_KEY = "dataset.corruption"


def mean_std_text(values: Sequence[float], spec: str = ".4f") -> str:
    """"m ± s" over the (finite) values, "—" for none."""
    if not values:
        return "—"
    mean, spread = mean_std(values)
    return f"{mean:{spec}} ± {spread:{spec}}"


def metric_text(group: Group, key: str, spec: str = ".4f") -> str:
    return mean_std_text(finite_values(group.completed, key), spec)


def mean_curve(group: Group, key: str) -> tuple[list[int], list[float]]:
    """Epochs and the mean over the group's completed runs of ``key`` at each epoch."""
    by_epoch: dict[int, list[float]] = {}
    for job in group.completed:
        for record in RunFolder(job.folder).history():
            if key in record:
                by_epoch.setdefault(int(record["epoch"]), []).append(float(record[key]))
    epochs = sorted(by_epoch)
    return epochs, [statistics.fmean(by_epoch[e]) for e in epochs]


# --- randomization tests ------------------------------------------------------------------------

def corruption_groups(groups: Sequence[Group]) -> list[Group]:
    """The groups, when they differ in dataset.corruption (else [])."""
    values = {str(group.settings.get(CORRUPTION_KEY)) for group in groups
              if CORRUPTION_KEY in group.settings}
    return list(groups) if len(values) > 1 else []


def fit_text(group: Group) -> str:
    runs = group.completed
    fitted = finite_values(runs, FIT_EPOCH)
    never = len(runs) - len(fitted)
    text = mean_std_text(fitted, ".1f")
    return text + (f" ({never} of {len(runs)} never)" if never else "")


def randomization_section(groups: Sequence[Group]) -> list[str]:
    shown = corruption_groups(groups)
    if not shown:
        return []
    rows = ["| settings | runs | train acc (eval) | test acc | fit/epoch |", "|---|---:|---:|---:|---:|"]
    for group in shown:
        rows.append(f"| {group.label} | {len(group.completed)} | {metric_text(group, 'train/acc')} "
                    f"| {metric_text(group, TEST_ACC)} | {fit_text(group)} |")
    return ["## Randomization tests",
            "Zhang et al. 2017: mean ± std over seeds; fit/epoch is the first epoch whose training "
            "accuracy reached trainer.fit_threshold (time to fit).", "\n".join(rows),
            f"![training loss per corruption]({TRAIN_LOSS_PNG})"]


def training_loss_figure(groups: Sequence[Group]) -> Optional[Figure]:
    shown = corruption_groups(groups)
    if not shown:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for group in shown:
        epochs, losses = mean_curve(group, "train/loss")
        if epochs:
            axes.plot(epochs, losses, label=group.label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("training loss (mean over seeds)")
    axes.set_yscale("log")
    axes.set_title("Randomization tests (Zhang et al. 2017, Fig. 1a)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


# --- variance shift -----------------------------------------------------------------------------

def variance_shift_section(groups: Sequence[Group]) -> list[str]:
    if not any(VARIANCE_SHIFT_MAX in job.metrics for group in groups for job in group.completed):
        return []
    rows = ["| settings | runs | test acc | variance shift max | variance shift mean |",
            "|---|---:|---:|---:|---:|"]
    for group in groups:
        rows.append(f"| {group.label} | {len(group.completed)} | {metric_text(group, TEST_ACC)} | "
                    f"{metric_text(group, VARIANCE_SHIFT_MAX, '.3f')} | "
                    f"{metric_text(group, VARIANCE_SHIFT_MEAN, '.3f')} |")
    return ["## Variance shift (dropout and BatchNorm)",
            "Li et al. 2019: per BN layer that runs after dropout, its running variance over the "
            "variance of its test-time input (mean over channels); 1 = no shift, — = no BN layer "
            "after dropout.", "\n".join(rows)]


# --- effective learning rate under BatchNorm ------------------------------------------------------

def group_effective_lr(group: Group) -> Optional[float]:
    """Mean over runs of the mean over epochs of train/effective_lr."""
    per_run = []
    for job in group.completed:
        values = finite(r.get(EFFECTIVE_LR) for r in RunFolder(job.folder).history())
        if values:
            per_run.append(statistics.fmean(values))
    return statistics.fmean(per_run) if per_run else None


def final_history_value(group: Group, key: str) -> list[float]:
    finals = []
    for job in group.completed:
        values = finite(r.get(key) for r in RunFolder(job.folder).history())
        if values:
            finals.append(values[-1])
    return finals


# The settings whose grid the effective-lr section explains (experiment=l2_batchnorm); other BN
# sweeps log train/effective_lr too, but sorting them by it would say nothing.
STEP_SIZE_KEYS = ("optimizer.lr", "regularizer.l2.coef")


def effective_lr_rows(groups: Sequence[Group]) -> list[tuple[float, Group]]:
    if not any(key in group.settings for group in groups for key in STEP_SIZE_KEYS):
        return []
    rows = [(group_effective_lr(group), group) for group in groups]
    return sorted([(lr, group) for lr, group in rows if lr is not None], key=lambda row: row[0])


def effective_lr_section(groups: Sequence[Group]) -> list[str]:
    rows = effective_lr_rows(groups)
    if len(rows) < 2:
        return []
    table = ["| settings | runs | mean effective lr | final BN'd weight norm | test acc |",
             "|---|---:|---:|---:|---:|"]
    for lr, group in rows:
        table.append(f"| {group.label} | {len(group.completed)} | {lr:.3g} | "
                     f"{mean_std_text(final_history_value(group, BN_WEIGHT_NORM), '.2f')} | "
                     f"{metric_text(group, TEST_ACC)} |")
    return ["## Effective learning rate under BatchNorm",
            "van Laarhoven 2017: layers that feed BatchNorm are scale-invariant, so L2 acts on them "
            "only through lr / ||w||^2 (train/effective_lr, mean over those layers and the epochs). "
            "Sorted by it: neighbouring rows have similar effective lr whatever lr and L2 "
            "coefficient gave it.", "\n".join(table), f"![test accuracy vs effective lr]({EFFECTIVE_LR_PNG})"]


def effective_lr_figure(groups: Sequence[Group]) -> Optional[Figure]:
    rows = effective_lr_rows(groups)
    if len(rows) < 2:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for lr, group in rows:
        accuracy = finite_values(group.completed, TEST_ACC)
        if accuracy:
            axes.scatter([lr] * len(accuracy), accuracy, s=18)
            axes.annotate(group.label, (lr, statistics.fmean(accuracy)), fontsize=6,
                          xytext=(3, 3), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_xlabel("mean effective learning rate lr / ||w||^2 (layers feeding BN)")
    axes.set_ylabel("test accuracy (each run)")
    axes.set_title("Weight decay under BatchNorm")
    figure.tight_layout()
    return figure


# --- what the report calls -----------------------------------------------------------------------

def probe_sections(groups: Sequence[Group]) -> list[str]:
    """Markdown sections for summary.md (none when the sweep has nothing to show)."""
    return [*randomization_section(groups), *variance_shift_section(groups),
            *effective_lr_section(groups)]


def write_probe_plots(out: Path, groups: Sequence[Group]) -> list[str]:
    """train_loss.png and effective_lr.png where they apply; returns the files written."""
    from regbench.report.plots import save_figure

    written = []
    for name, figure in ((TRAIN_LOSS_PNG, training_loss_figure(groups)),
                         (EFFECTIVE_LR_PNG, effective_lr_figure(groups))):
        if figure is not None:
            save_figure(figure, Path(out) / name, dpi=120)
            written.append(name)
    return written
